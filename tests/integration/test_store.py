"""KpiStore against the real Redis, by example: idempotency, conflicts, re-attribution,
offset watermarks and key lifetimes (DESIGN sections 2-4).

Every document read back is also compared with the batch reference (tests/reference.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack
import pytest
from redis.exceptions import WatchError

from kpi_state.events import EVENT_ADAPTER, Event
from kpi_state.report import KpiReader
from kpi_state.settings import Settings
from kpi_state.store import ApplyResult, KpiStore, Outcome, SourcedEvent
from tests.conftest import SettingsFactory, StoreOpener
from tests.reference import assert_documents_match, reference_document

pytestmark = pytest.mark.integration

AS_OF = datetime(2026, 3, 31, 12, 34, 56, tzinfo=UTC)


def ts(minutes_before: float) -> str:
    return (AS_OF - timedelta(minutes=minutes_before)).isoformat()


def E(event_type: str, event_id: str, minutes_before: float, /, **fields: Any) -> Event:
    """An event ``minutes_before`` AS_OF."""
    return EVENT_ADAPTER.validate_python(
        {"type": event_type, "event_id": event_id, "occurred_at": ts(minutes_before), **fields}
    )


HISTORY = [
    E("lead.created", "l1", 50, lead_id="L1", source="web", segment="smb", rep_id="alice"),
    E("lead.created", "l2", 49, lead_id="L2", source="ads", segment="ent"),
    E("lead.qualified", "q1", 45, lead_id="L1"),
    E("deal.created", "c1", 40, deal_id="D1", rep_id="alice", amount=1000, lead_id="L1"),
    E("deal.created", "c2", 40, deal_id="D2", rep_id="bob", amount=500, lead_id="L2", stage="proposal"),
    E("deal.created", "c3", 40, deal_id="D3", rep_id="bob", amount=300, currency="USD"),
    E("deal.stage_changed", "s1", 30, deal_id="D1", to_stage="negotiation", amount=1200),
    E("deal.won", "w1", 20, deal_id="D1", customer_id="C1", rep_id="alice", amount=1200),
    E("deal.lost", "x2", 15, deal_id="D2", rep_id="bob", reason="price"),
    E("spend.recorded", "sp1", 10, amount=400, category="marketing", source="web"),
    E("revenue.recorded", "rv1", 5, customer_id="C1", amount=100, gross_margin=0.7),
    E("survey.answered", "n1", 5, kind="nps", score=9, customer_id="C1"),
    E("survey.answered", "s1x", 5, kind="csat", score=4),
]


async def read(store: KpiStore, settings: Settings, as_of: datetime = AS_OF) -> dict[str, Any]:
    return await KpiReader(store, settings).document(as_of)


async def snapshot(store: KpiStore) -> dict[str, Any]:
    """Every key of the namespace with its logical value (entity state decoded)."""
    client = store.redis
    out: dict[str, Any] = {}
    async for raw in client.scan_iter(match=store.prefix + "*", count=1000):
        name = raw.decode()[len(store.prefix) :]
        kind = (await client.type(raw)).decode()
        if kind == "hash":
            out[name] = await client.hgetall(raw)
        elif kind == "set":
            out[name] = await client.smembers(raw)
        elif name[:2] in ("L:", "D:", "C:"):
            out[name] = msgpack.unpackb(await client.get(raw), strict_map_key=False)
        else:
            out[name] = await client.get(raw)
    return out


async def ttls(store: KpiStore) -> dict[str, int]:
    out: dict[str, int] = {}
    async for raw in store.redis.scan_iter(match=store.prefix + "*", count=1000):
        out[raw.decode()[len(store.prefix) :]] = await store.redis.ttl(raw)
    return out


def check_reference(
    document: dict[str, Any], applied_in_order: Sequence[Event], settings: Settings, as_of: datetime = AS_OF
) -> None:
    assert_documents_match(document, reference_document(applied_in_order, settings, as_of))


def outcomes(result: ApplyResult) -> str:
    return "".join(o.value for o in result.outcomes)


# ------------------------------------------------------------------ idempotency


def test_applying_twice_changes_nothing(make_settings: SettingsFactory, open_store: StoreOpener) -> None:
    settings = make_settings(currency_rates="USD=0.9")

    async def scenario() -> None:
        async with open_store(settings) as store:
            first = await store.apply(HISTORY)
            assert (first.applied, first.duplicates, first.rejected) == (len(HISTORY), 0, [])
            before = await read(store, settings)
            again = await store.apply(HISTORY)
            assert (again.applied, again.duplicates, again.rejected) == (0, len(HISTORY), [])
            assert outcomes(again) == "d" * len(HISTORY)
            assert await read(store, settings) == before
            check_reference(before, HISTORY, settings)
            assert before["windows"]["1h"]["total"]["deals_won"] == 1
            prospecting = before["current"]["pipeline"]["by_stage"]["prospecting"]
            assert prospecting == {"open_deals": 1, "value": 270.0}

    asyncio.run(scenario())


def test_duplicates_within_one_batch(make_settings: SettingsFactory, open_store: StoreOpener) -> None:
    settings = make_settings()
    lead = E("lead.created", "same", 5, lead_id="L1")
    other_payload = E("lead.created", "same", 5, lead_id="L2")  # one event_id, two payloads

    async def scenario() -> None:
        async with open_store(settings) as store:
            result = await store.apply([lead, lead, other_payload])
            assert outcomes(result) == "add"
            assert (result.applied, result.duplicates) == (1, 2)
            document = await read(store, settings)
            assert document["windows"]["1h"]["total"]["leads"] == 1
            check_reference(document, [lead, lead, other_payload], settings)

    asyncio.run(scenario())


def test_a_batch_of_duplicates_writes_nothing(
    make_settings: SettingsFactory, open_store: StoreOpener
) -> None:
    settings = make_settings(currency_rates="USD=0.9")

    async def scenario() -> None:
        async with open_store(settings) as store:
            await store.apply(HISTORY)
            before, ttl_before = await snapshot(store), await ttls(store)
            keys = [store.prefix + name for name in before]
            await asyncio.sleep(1.1)  # a rewritten TTL would come back a second longer
            # WATCH fails the transaction if anything writes any of these keys, even unchanged values.
            async with store.redis.pipeline(transaction=True) as watcher:
                await watcher.watch(*keys)
                result = await store.apply(list(reversed(HISTORY)))
                watcher.multi()
                watcher.exists(keys[0])
                try:
                    await watcher.execute()
                except WatchError:
                    pytest.fail("a batch of duplicates wrote to the store")
            assert result.duplicates == len(HISTORY) and result.applied == 0
            assert await snapshot(store) == before
            for name, ttl in (await ttls(store)).items():
                # no key got a fresh TTL (they are all a second closer to expiry, or have none)
                assert ttl == -1 if ttl_before[name] == -1 else ttl < ttl_before[name], name

    asyncio.run(scenario())


# ------------------------------------------------------------------ conflicts


def test_conflicts_are_rejected_and_change_nothing(
    make_settings: SettingsFactory, open_store: StoreOpener
) -> None:
    settings = make_settings(currency_rates="USD=0.9")
    # Contract v2: only a second creation is a conflict (a second deal.won/deal.lost is a
    # correction, see test_corrections.py).
    conflicting = [
        E("lead.created", "k1", 1, lead_id="L1", source="tv"),
        E("deal.created", "k2", 1, deal_id="D1", rep_id="carol", amount=1, lead_id="L2"),
        E("lead.created", "k3", 60, lead_id="L2", source="web", rep_id="carol"),
        E("deal.created", "k4", 45, deal_id="D2", rep_id="carol", amount=9, stage="negotiation"),
        E("deal.created", "k5", 1, deal_id="D3", rep_id="bob", amount=300, currency="USD"),  # a retry, new id
    ]

    async def scenario() -> None:
        async with open_store(settings) as store:
            await store.apply(HISTORY)
            document, state = await read(store, settings), await snapshot(store)
            result = await store.apply(conflicting)
            assert result.applied == 0 and outcomes(result) == "c" * len(conflicting)
            assert [(pos, r.reason) for pos, r in result.rejected] == [
                (i, "conflict") for i in range(len(conflicting))
            ]
            assert await read(store, settings) == document
            # Every key holds what it held. (`wm`, the newest event time that bucket retention is
            # measured against, is raised by any event of a batch, even a rejected one.)
            after = await snapshot(store)
            after.pop("wm")
            state.pop("wm")
            assert after == state
            # A conflicting event is not marked as seen: its retry is a conflict again.
            retry = await store.apply(conflicting[:1])
            assert outcomes(retry) == "c"
            check_reference(await read(store, settings), [*HISTORY, *conflicting, *conflicting[:1]], settings)

    asyncio.run(scenario())


def test_conflicts_within_one_batch_keep_the_first(
    make_settings: SettingsFactory, open_store: StoreOpener
) -> None:
    settings = make_settings()
    batch = [
        E("deal.created", "a", 3, deal_id="D", rep_id="alice", amount=10),
        E("deal.created", "b", 2, deal_id="D", rep_id="bob", amount=20),  # conflict
        E("deal.lost", "c", 1, deal_id="D", rep_id="carol"),
        E("lead.created", "e", 2, lead_id="L", source="ads"),
        E("lead.created", "f", 1, lead_id="L", source="tv"),  # conflict
        # "b" was rejected, so its id is free for another event
        E("lead.created", "b", 1, lead_id="L2", source="web"),
    ]

    async def scenario() -> None:
        async with open_store(settings) as store:
            result = await store.apply(batch)
            assert outcomes(result) == "acaaca"
            assert [pos for pos, _ in result.rejected] == [1, 4]
            document = await read(store, settings)
            total = document["windows"]["1h"]["total"]
            counts = (total["deals_created"], total["deals_lost"], total["deals_won"], total["leads"])
            assert counts == (1, 1, 0, 2)
            # carol's deal.lost states the owner last: the kept creation counts for her too
            assert list(document["windows"]["1h"]["by_rep"]) == ["carol", "unassigned"]
            assert sorted(document["windows"]["1h"]["by_source"]) == ["ads", "unknown", "web"]
            check_reference(document, batch, settings)

    asyncio.run(scenario())


# ------------------------------------------------------------------ re-attribution


def test_lead_created_after_the_win_re_attributes(
    make_settings: SettingsFactory, open_store: StoreOpener
) -> None:
    settings = make_settings()
    won = E("deal.won", "w", 10, deal_id="D", customer_id="C", rep_id="bob", amount=100, lead_id="L")
    qualified = E("lead.qualified", "q", 20, lead_id="L")
    created = E("lead.created", "l", 30, lead_id="L", source="web", segment="ent", rep_id="alice")

    async def scenario() -> None:
        async with open_store(settings) as store:
            await store.apply([won, qualified])
            window = (await read(store, settings))["windows"]["1h"]
            assert list(window["by_source"]) == ["unknown"]
            assert window["by_source"]["unknown"]["lead_conversions"] == 1
            assert window["by_source"]["unknown"]["new_customers"] == 1
            assert sorted(window["by_rep"]) == ["bob", "unassigned"]
            await store.apply([created])
            document = await read(store, settings)
            window = document["windows"]["1h"]
            assert list(window["by_source"]) == ["web"]  # nothing is left for "unknown"
            web = window["by_source"]["web"]
            assert (
                web["leads"],
                web["qualified_leads"],
                web["lead_conversions"],
                web["cohort_conversions"],
                web["deals_won"],
                web["new_customers"],
            ) == (1, 1, 1, 1, 1, 1)
            assert sorted(window["by_rep"]) == ["alice", "bob"]
            assert window["by_rep"]["alice"]["lead_conversions"] == 1
            assert window["by_rep"]["bob"]["deals_won"] == 1
            assert list(window["by_segment"]) == ["ent"]
            check_reference(document, [won, qualified, created], settings)

    asyncio.run(scenario())


def test_deal_created_after_a_win_without_lead_id(
    make_settings: SettingsFactory, open_store: StoreOpener
) -> None:
    settings = make_settings()
    lead = E("lead.created", "l", 50, lead_id="L", source="web", rep_id="alice")
    won = E("deal.won", "w", 10, deal_id="D", customer_id="C", rep_id="bob", amount=100)
    change = E("deal.stage_changed", "s", 20, deal_id="D", to_stage="proposal")
    created = E("deal.created", "c", 40, deal_id="D", rep_id="alice", amount=80, lead_id="L")

    async def scenario() -> None:
        async with open_store(settings) as store:
            await store.apply([lead, won, change])
            window = (await read(store, settings))["windows"]["1h"]
            assert window["total"]["lead_conversions"] == 0
            assert window["total"]["sales_cycle_days"] is None
            assert window["by_source"]["unknown"]["deals_won"] == 1
            # Contract v2: a stage change naming no rep counts for the deal's current owner, stated
            # by the win.
            assert window["by_rep"]["bob"]["stage_entries"]["proposal"] == 1
            await store.apply([created])
            document = await read(store, settings)
            window = document["windows"]["1h"]
            assert sorted(window["by_source"]) == ["web"]
            web = window["by_source"]["web"]
            counts = (web["deals_created"], web["deals_won"], web["lead_conversions"], web["new_customers"])
            assert counts == (1, 1, 1, 1)
            assert window["total"]["sales_cycle_days"] == pytest.approx(30 / 1440)
            # The win (10 minutes ago) states the owner after the creation (40): bob keeps the deal.
            assert sorted(window["by_rep"]) == ["alice", "bob"]  # alice owns the lead
            assert window["by_rep"]["bob"]["stage_entries"]["proposal"] == 1
            assert window["by_rep"]["bob"]["deals_created"] == 1
            assert window["by_rep"]["alice"]["deals_created"] == 0
            assert window["by_rep"]["alice"]["lead_conversions"] == 1
            assert document["current"]["pipeline"]["open_deals"] == 0
            check_reference(document, [lead, won, change, created], settings)

    asyncio.run(scenario())


def test_stage_change_without_rep_before_its_deal_created(
    make_settings: SettingsFactory, open_store: StoreOpener
) -> None:
    settings = make_settings()
    changes = [
        E("deal.stage_changed", "s1", 20, deal_id="D", to_stage="qualification", amount=50),
        E("deal.stage_changed", "s2", 10, deal_id="D", to_stage="proposal", rep_id="carol"),
    ]
    created = E("deal.created", "c", 30, deal_id="D", rep_id="alice", amount=10)

    async def scenario() -> None:
        async with open_store(settings) as store:
            await store.apply(changes)
            document = await read(store, settings)
            assert sorted(document["windows"]["1h"]["by_rep"]) == ["carol", "unassigned"]
            assert document["current"]["pipeline"]["open_deals"] == 0  # not created yet
            await store.apply([created])
            document = await read(store, settings)
            by_rep = document["windows"]["1h"]["by_rep"]
            assert sorted(by_rep) == ["alice", "carol"]
            assert by_rep["alice"]["stage_entries"] == {
                "prospecting": 1,
                "qualification": 1,
                "proposal": 0,
                "negotiation": 0,
                "won": 0,
            }
            assert by_rep["carol"]["stage_entries"]["proposal"] == 1
            assert document["current"]["pipeline"]["by_stage"]["proposal"] == {"open_deals": 1, "value": 50.0}
            check_reference(document, [*changes, created], settings)

    asyncio.run(scenario())


def test_an_earlier_win_becomes_the_first_win(
    make_settings: SettingsFactory, open_store: StoreOpener
) -> None:
    settings = make_settings()
    lead = E("lead.created", "l", 120, lead_id="L", source="ads")
    later = E("deal.won", "w2", 10, deal_id="D2", customer_id="C", rep_id="bob", amount=100)
    earlier = E("deal.won", "w1", 100, deal_id="D1", customer_id="C", rep_id="alice", amount=50, lead_id="L")

    async def scenario() -> None:
        async with open_store(settings) as store:
            await store.apply([lead, later])
            document = await read(store, settings)
            assert document["windows"]["1h"]["total"]["new_customers"] == 1
            assert document["windows"]["1h"]["by_rep"]["bob"]["new_customers"] == 1
            await store.apply([earlier])
            document = await read(store, settings)
            # The customer is new at 100 minutes before AS_OF now: outside 1h, inside 24h.
            assert document["windows"]["1h"]["total"]["new_customers"] == 0
            assert document["windows"]["1h"]["by_rep"]["bob"]["new_customers"] == 0
            day = document["windows"]["24h"]
            assert day["total"]["new_customers"] == 1
            assert day["by_rep"]["alice"]["new_customers"] == 1
            assert day["by_source"]["ads"]["new_customers"] == 1
            assert day["by_source"]["unknown"]["new_customers"] == 0
            assert document["current"]["active_customers"] == 1
            check_reference(document, [lead, later, earlier], settings)

    asyncio.run(scenario())


# ------------------------------------------------------------------ offset watermarks


def test_offset_watermarks_skip_redelivered_events(
    make_settings: SettingsFactory, open_store: StoreOpener
) -> None:
    settings = make_settings()
    p0, p1 = "crm-events/0", "crm-events/1"
    leads = [E("lead.created", f"e{i}", 5, lead_id=f"L{i}") for i in range(8)]

    async def scenario() -> None:
        async with open_store(settings) as store:
            first = await store.apply([SourcedEvent(leads[i], p0, i) for i in range(4)], marks={p0: 3})
            assert (first.applied, first.redelivered) == (4, 0)
            assert await store.offsets() == {p0: 3}
            # After a rebalance offsets 2..5 come again; 2 and 3 are at or below the watermark.
            # Offset 3 even carries an event never seen: the watermark, not the id, decides.
            second = await store.apply(
                [
                    SourcedEvent(leads[2], p0, 2),
                    SourcedEvent(leads[6], p0, 3),
                    SourcedEvent(leads[4], p0, 4),
                    SourcedEvent(leads[5], p0, 5),
                    SourcedEvent(leads[1], p1, 0),
                ],
                marks={p0: 5, p1: 0},
            )
            assert outcomes(second) == "rraad"
            assert (second.applied, second.redelivered, second.duplicates) == (2, 2, 1)
            assert await store.offsets() == {p0: 5, p1: 0}
            # Watermarks never go down, and marks alone are applied.
            await store.apply([], marks={p0: 1, p1: 7})
            assert await store.offsets() == {p0: 5, p1: 7}
            document = await read(store, settings)
            assert document["windows"]["1h"]["total"]["leads"] == 6
            check_reference(document, leads[:6], settings)

    asyncio.run(scenario())


# ------------------------------------------------------------------ key lifetimes


def test_key_lifetimes(make_settings: SettingsFactory, open_store: StoreOpener) -> None:
    settings = make_settings(
        currency_rates="USD=0.9",
        minute_bucket_margin_seconds=600,
        hour_bucket_margin_seconds=7200,
        day_bucket_margin_seconds=86400,
        bucket_grace_seconds=300,
        entity_retention_seconds=2 * 86400,
        dedupe_ttl_seconds=900,
    )
    # Day buckets for ytd_prev's partial month (a year and a month back), month buckets for two
    # fiscal years and a month (DESIGN section 3).
    keep = {"m": 3600 + 600, "h": 86400 + 7200, "d": 400 * 86400 + 86400, "mo": 25 * 31 * 86400 + 86400}
    grace = 300
    newest = AS_OF - timedelta(minutes=5)  # the newest event of HISTORY
    old = E("lead.created", "old", 180, lead_id="OLD")  # its minute bucket is past retention

    async def scenario() -> None:
        async with open_store(settings) as store:
            await store.apply([old, *HISTORY])
            lifetimes = await ttls(store)
            kinds = {name.split(":", 1)[0] for name in lifetimes}
            assert kinds == {"m", "h", "d", "mo", "all", "cur", "L", "D", "C", "seen", "wm", "dv"}
            for name, ttl in lifetimes.items():
                kind = name.split(":", 1)[0]
                if kind in ("all", "cur", "wm", "dv"):
                    # lifetime totals, current state and admitted dimension values never expire
                    assert ttl == -1, name
                elif kind in ("L", "D", "C"):
                    assert 2 * 86400 - 5 <= ttl <= 2 * 86400, name
                elif kind == "seen":
                    assert 900 - 5 <= ttl <= 900, name
                else:
                    assert 0 < ttl <= keep[kind] + grace, name
            # A bucket lives until its start is `keep` older than the newest event, plus the grace.
            minute = newest.replace(second=0)
            expected = int((minute - newest).total_seconds()) + keep["m"] + grace
            assert abs(lifetimes[f"m:{int(minute.timestamp())}"] - expected) <= 3
            old_minute = (AS_OF - timedelta(minutes=180)).replace(second=0)
            assert 0 < lifetimes[f"m:{int(old_minute.timestamp())}"] <= grace
            month = newest.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            expected = int((month - newest).total_seconds()) + keep["mo"] + grace
            assert abs(lifetimes[f"mo:{int(month.timestamp())}"] - expected) <= 3
            assert await store.redis.get(store.prefix + "wm") == str(int(newest.timestamp())).encode()
            check_reference(await read(store, settings), [old, *HISTORY], settings)

    asyncio.run(scenario())


def test_outcomes_are_per_input_position(make_settings: SettingsFactory, open_store: StoreOpener) -> None:
    settings = make_settings()
    too_big = E("spend.recorded", "big", 1, amount=2e9, category="sales")
    fine = E("spend.recorded", "fine", 1, amount=2, category="sales")

    async def scenario() -> None:
        async with open_store(settings) as store:
            result = await store.apply([too_big, fine, fine])
            assert result.outcomes == [Outcome.REJECTED, Outcome.APPLIED, Outcome.DUPLICATE]
            assert [(pos, r.reason) for pos, r in result.rejected] == [(0, "invalid_amount")]
            assert (await read(store, settings))["windows"]["1h"]["total"]["spend"] == 2.0

    asyncio.run(scenario())
