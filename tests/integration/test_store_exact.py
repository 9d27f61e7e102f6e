"""Counters stay exact integers of any size (issue 15, defect 2: 9,300 spends of 1e9 wrapped
``spend`` to -9.2e12). Real Redis: the wide-integer Lua (kpi_state/lua/wide.lua) is checked
against Python's integers, then through the apply and sum scripts.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from kpi_state.events import EVENT_ADAPTER, MAX_AMOUNT, Event
from kpi_state.report import KpiReader
from kpi_state.store import lua_source
from tests.conftest import REDIS_URL, SettingsFactory, StoreOpener
from tests.reference import assert_documents_match, reference_document

pytestmark = pytest.mark.integration

AS_OF = datetime(2026, 3, 31, 12, 34, 56, tzinfo=UTC)
MICROS = 1_000_000
WINDOWS = ("1h", "24h", "7d", "30d", "90d", "all")


def E(event_type: str, event_id: str, minutes_before: float, /, **fields: Any) -> Event:
    at = (AS_OF - timedelta(minutes=minutes_before)).isoformat()
    return EVENT_ADAPTER.validate_python(
        {"type": event_type, "event_id": event_id, "occurred_at": at, **fields}
    )


def interesting_ints(rng: random.Random, n: int) -> list[int]:
    """Integers around every boundary that matters: limbs (1e7), doubles (2^52, 2^53), the
    old wrap (2^63), and far beyond, of both signs."""
    edges = [0, 1, 10**7 - 1, 10**7, 10**14, 10**15 - 1, 10**15, 2**52 - 1, 2**52, 2**53 - 1, 2**53,
             2**53 + 1, 2**63 - 1, 2**63, 2**64 + 7, 10**30 + 1]  # fmt: skip
    out = []
    for _ in range(n):
        if rng.random() < 0.5:
            v = rng.choice(edges) + rng.randint(-3, 3)
        else:
            v = rng.randint(0, 10 ** rng.randint(1, 40))
        out.append(v if rng.random() < 0.5 else -v)
    return out


def test_wide_integers_match_python() -> None:
    """w_of_string / w_of_number / w_add / w_tostring, through Redis's own Lua."""
    script = (
        lua_source("wide.lua")
        + """
local out = {}
for i = 1, #ARGV, 3 do
  local a, b, small = w_of_string(ARGV[i]), w_of_string(ARGV[i + 1]), tonumber(ARGV[i + 2])
  out[#out + 1] = w_tostring(w_add(a, b))
  out[#out + 1] = w_tostring(w_add(a, w_of_number(small)))
end
return out
"""
    )
    rng = random.Random(15)
    big = interesting_ints(rng, 400)
    cases = []
    for a, b in zip(big[::2], big[1::2], strict=True):
        small = rng.choice([0, 1, -1, 2**52 - 1, -(2**52) + 1, 10**15, rng.randint(-(2**52), 2**52)])
        cases.append((a, b, small))
    cases += [(5, -5, 0), (10**7, -1, 0), (-(10**14), 10**14, -(2**52) + 1), (2**63, -(2**63), 0)]

    async def run() -> list[bytes]:
        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            args = [str(x) for case in cases for x in case]
            return list(await client.eval(script, 0, *args))
        finally:
            await client.aclose()

    replies = asyncio.run(run())
    expected = [str(v) for a, b, small in cases for v in (a + b, a + small)]
    assert [r.decode() for r in replies] == expected


def test_sum_windows_is_exact_past_2_63(make_settings: SettingsFactory, open_store: StoreOpener) -> None:
    settings = make_settings()
    rng = random.Random(7)
    fields = [f"f{i}" for i in range(12)]
    hashes = [
        {f: v for f, v in zip(fields, interesting_ints(rng, len(fields)), strict=True) if v} for _ in range(9)
    ]

    async def scenario() -> None:
        async with open_store(settings) as store:
            for i, h in enumerate(hashes):
                await store.redis.hset(f"{store.prefix}d:{i}", mapping={k: str(v) for k, v in h.items()})
            cuts = [1, 4, 9]
            sums = await store.sum_windows([([f"d:{i}" for i in range(9)], cuts)])
            for cut, got in zip(cuts, sums, strict=True):
                want: dict[str, int] = {}
                for h in hashes[:cut]:
                    for k, v in h.items():
                        want[k] = want.get(k, 0) + v
                assert got == want, cut

    asyncio.run(scenario())


def test_sum_windows_subtracts_exactly_past_2_63(
    make_settings: SettingsFactory, open_store: StoreOpener
) -> None:
    """A calendar window read as a month minus its last days: exact for any size and sign,
    and a field that cancels out is no field."""
    settings = make_settings()
    rng = random.Random(11)
    fields = [f"f{i}" for i in range(12)]
    hashes = [
        {f: v for f, v in zip(fields, interesting_ints(rng, len(fields)), strict=True) if v} for _ in range(6)
    ]
    hashes.append(dict(hashes[5]))  # the last two cancel out field by field

    async def scenario() -> None:
        async with open_store(settings) as store:
            for i, h in enumerate(hashes):
                await store.redis.hset(f"{store.prefix}d:{i}", mapping={k: str(v) for k, v in h.items()})
            names = [f"d:{i}" for i in range(7)]
            for minus in (0, 1, 3):
                (got,) = await store.sum_windows([(names[: 7 - minus] + names[7 - minus :], [7], minus)])
                want: dict[str, int] = {}
                for i, h in enumerate(hashes):
                    for k, v in h.items():
                        want[k] = want.get(k, 0) + (v if i < 7 - minus else -v)
                assert got == {k: v for k, v in want.items() if v or minus == 0}, minus
            (cancelled,) = await store.sum_windows([(names[5:7], [2], 1)])
            assert cancelled == {}
            with pytest.raises(ValueError, match="subtract only in its last cut"):
                await store.sum_windows([(names[:4], [3, 4], 2)])  # the first cut would end among them

    asyncio.run(scenario())


def test_9300_spends_of_1e9_stay_exact(make_settings: SettingsFactory, open_store: StoreOpener) -> None:
    """The probe's case: every spend is accepted and every window's total is exact, never wrapped."""
    assert MAX_AMOUNT == 1e9
    settings = make_settings()
    n = 9_300
    spends = [
        E("spend.recorded", f"sp{i}", 1 + (i % 50) * 0.5, amount=1e9, category="marketing", source="web")
        for i in range(n)
    ]

    async def scenario() -> None:
        async with open_store(settings) as store:
            applied = 0
            for first in range(0, n, 500):
                result = await store.apply(spends[first : first + 500])
                assert not result.rejected
                applied += result.applied
            assert applied == n
            exact = n * 10**9 * MICROS  # 9.3e18: past 2^63 (9.22e18)
            raw = await store.redis.hmget(store.prefix + "all", ["sp", "sm", "sp|s|web", "sm|s|web"])
            assert [int(v) for v in raw] == [exact] * 4
            sums = await store.sum_windows([(["all"], [1])])
            assert sums[0]["sp"] == exact
            doc = await KpiReader(store, settings).document(AS_OF)
            for window in WINDOWS:
                w = doc["windows"][window]
                assert w["total"]["spend"] == n * 1e9 == w["by_source"]["web"]["spend"], window
                assert w["total"]["spend_marketing"] == n * 1e9, window

    asyncio.run(scenario())


def test_wide_counters_retract_to_exactly_zero(
    make_settings: SettingsFactory, open_store: StoreOpener
) -> None:
    """Ten wins of 1e9 linked to a lead that is created afterwards: revenue is re-attributed
    from source "unknown" to "web", a retraction of 1e16 (> 2^53) that must leave nothing."""
    settings = make_settings()
    wins = [
        E(
            "deal.won",
            f"w{i}",
            20,
            deal_id=f"D{i}",
            rep_id="alice",
            amount=1e9,
            customer_id=f"C{i}",
            lead_id="L1",
        )
        for i in range(10)
    ]
    lead = E("lead.created", "l1", 30, lead_id="L1", source="web", segment="smb", rep_id="alice")

    async def scenario() -> None:
        async with open_store(settings) as store:
            await store.apply(wins[:6])
            await store.apply(wins[6:])
            assert int(await store.redis.hget(store.prefix + "all", "rw|s|unknown")) == 10**16
            await store.apply([lead])
            fields = await store.redis.hgetall(store.prefix + "all")
            assert b"rw|s|unknown" not in fields and b"rw|g|unknown" not in fields
            assert int(fields[b"rw|s|web"]) == int(fields[b"rw"]) == 10**16
            doc = await KpiReader(store, settings).document(AS_OF)
            assert_documents_match(doc, reference_document([*wins, lead], settings, AS_OF))

    asyncio.run(scenario())


def test_a_stored_counter_past_2_64_keeps_adding_exactly(
    make_settings: SettingsFactory, open_store: StoreOpener
) -> None:
    """State written by an older version or grown for years: any stored size is read exactly."""
    settings = make_settings()
    start = 2**64 + 3

    async def scenario() -> None:
        async with open_store(settings) as store:
            await store.redis.hset(store.prefix + "all", mapping={"sp": str(start), "ss": str(-start)})
            await store.apply([E("spend.recorded", "s1", 5, amount=1e9, category="sales", source="web")])
            raw = await store.redis.hmget(store.prefix + "all", ["sp", "ss"])
            assert [int(v) for v in raw] == [start + 10**15, -start + 10**15]

    asyncio.run(scenario())
