"""The write-time dimension cap (issue 15, defect 4: 20k unique sources grew a namespace from
0.7 MB to 39.5 MB, /metrics to 8.7 s and /api/kpis to 163 MB). Real Redis.

Values past ``dimension_cap`` fold into "other" exactly (totals unchanged), retractions hit
the label their addition hit, folding is stable, and reads stay bounded whatever the input.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from kpi_state.collector import render_metrics
from kpi_state.events import EVENT_ADAPTER, Event
from kpi_state.opmetrics import OpMetrics
from kpi_state.report import KpiReader, split_counters
from kpi_state.settings import Settings
from kpi_state.store import KpiStore
from tests.conftest import SettingsFactory, StoreOpener
from tests.reference import assert_documents_match, reference_document

pytestmark = pytest.mark.integration

AS_OF = datetime(2026, 3, 31, 12, 34, 56, tzinfo=UTC)
RESERVED = {"unassigned", "unknown", "other"}


def E(event_type: str, event_id: str, minutes_before: float, /, **fields: Any) -> Event:
    at = (AS_OF - timedelta(minutes=minutes_before)).isoformat()
    return EVENT_ADAPTER.validate_python(
        {"type": event_type, "event_id": event_id, "occurred_at": at, **fields}
    )


def lead(n: str, minutes_before: float, **dims: str) -> Event:
    return E("lead.created", f"l{n}", minutes_before, lead_id=f"L{n}", **dims)


# In applied order, with a cap of 2 per dimension.
HISTORY = [
    lead("1", 500, source="web", segment="smb", rep_id="alice"),
    # A conflict (second lead.created of L1) takes no slot: "spam" is not admitted.
    lead("1", 499, source="spam", segment="spam", rep_id="spam"),
    lead("2", 498, source="ads", segment="ent", rep_id="bob"),
    lead("3", 497, source="social", segment="mid", rep_id="carol"),  # all three folded
    lead("4", 496, source="other", segment="smb"),  # a real "other" and a default rep
    # A win linked to L5 before L5 exists: attributed to "unknown", then moved to "partner"
    # (folded) when L5 arrives.
    E("deal.won", "w5", 400, deal_id="D5", rep_id="dave", amount=1e9, customer_id="C5", lead_id="L5"),
    E("deal.created", "c1", 450, deal_id="D1", rep_id="alice", amount=100, lead_id="L1"),
    # A stage change without rep before its deal exists: re-attributed to the deal's owner, bob
    # since his win (the latest owner statement, contract v2), not erin (folded) who created it.
    E("deal.stage_changed", "s6", 300, deal_id="D6", to_stage="proposal"),
    E("deal.created", "c6", 350, deal_id="D6", rep_id="erin", amount=200, lead_id="L3"),
    E("deal.won", "w6", 100, deal_id="D6", rep_id="bob", amount=300, customer_id="C6"),
    E("deal.lost", "x1", 90, deal_id="D1", rep_id="zed", reason="price"),
    lead("5", 380, source="partner", segment="ent", rep_id="alice"),
    E("spend.recorded", "sp1", 30, amount=50, category="marketing", source="web"),
    E("spend.recorded", "sp2", 20, amount=70, category="sales", source="tv"),
    E("spend.recorded", "sp3", 10, amount=90, category="sales"),
    E("deal.stage_changed", "s7", 5, deal_id="D7", to_stage="proposal", rep_id="spam"),
]


async def apply_in_batches(store: KpiStore, events: list[Event], size: int) -> list[dict[str, int]]:
    folded = []
    for first in range(0, len(events), size):
        result = await store.apply(events[first : first + size])
        folded.append(result.folded)
    return folded


@pytest.mark.parametrize("batch", [1, 4, len(HISTORY)])
def test_values_past_the_cap_fold_into_other_exactly(
    make_settings: SettingsFactory, open_store: StoreOpener, batch: int
) -> None:
    settings = make_settings(dimension_cap=2)
    uncapped = make_settings()

    async def scenario() -> None:
        async with open_store(settings) as store:
            folded = await apply_in_batches(store, HISTORY, batch)
            doc = await KpiReader(store, settings).document(AS_OF)
            admitted = {
                dim: {m.decode() for m in await store.redis.smembers(f"{store.prefix}dv:{dim}")}
                for dim in "rsg"
            }
        # The reference applies the same first-come cap.
        assert_documents_match(doc, reference_document(HISTORY, settings, AS_OF))
        assert admitted == {"r": {"alice", "bob"}, "s": {"web", "ads"}, "g": {"smb", "ent"}}
        full = reference_document(HISTORY, uncapped, AS_OF)
        for window, wdoc in doc["windows"].items():
            assert wdoc["total"] == full["windows"][window]["total"], window
            for key in ("by_rep", "by_source", "by_segment"):
                assert set(wdoc[key]) <= {*RESERVED, "alice", "bob", "web", "ads", "smb", "ent"}
        all_doc = doc["windows"]["all"]
        assert all_doc["by_source"]["other"]["leads"] == 3  # social, partner and the real "other"
        # w5 moved there from "unknown" when L5 arrived; w6 through its deal's lead L3
        assert all_doc["by_source"]["other"]["revenue_won"] == 1e9 + 300
        assert "unknown" not in all_doc["by_source"] or all_doc["by_source"]["unknown"]["revenue_won"] == 0
        assert all_doc["by_rep"]["other"]["stage_entries"]["proposal"] == 1  # spam's
        assert all_doc["by_rep"]["bob"]["stage_entries"]["proposal"] == 1  # D6's, bob's deal now
        # Applied events with a folded value: rep carol, dave, erin, zed, spam; source social,
        # partner, tv; segment mid.
        totals: dict[str, int] = {}
        for f in folded:
            for dim, n in f.items():
                totals[dim] = totals.get(dim, 0) + n
        assert totals == {"rep": 5, "source": 3, "segment": 1}

    asyncio.run(scenario())


def test_folding_is_stable_when_the_cap_is_raised(
    make_settings: SettingsFactory, open_store: StoreOpener
) -> None:
    """A lead stored with a folded source keeps retracting from "other" after the cap grows
    and its raw source becomes admissible: nothing goes negative, totals stay exact."""
    small = make_settings(dimension_cap=1)
    large = small.model_copy(update={"dimension_cap": 10})
    first = [lead("1", 60, source="web"), lead("2", 59, source="ads")]
    # Wins for L2 after the cap grew: L2 is re-emitted (retracted and added back) with its label.
    later = [
        E("deal.won", "w1", 30, deal_id="D1", rep_id="alice", amount=10, customer_id="C1", lead_id="L2"),
        E("deal.won", "w2", 20, deal_id="D2", rep_id="alice", amount=10, customer_id="C2", lead_id="L2"),
        E("spend.recorded", "sp", 10, amount=5, category="sales", source="ads"),
    ]

    async def scenario() -> None:
        async with open_store(small, clear=False) as store:
            await store.apply(first)
        async with open_store(large) as store:
            for event in later:
                await store.apply([event])
            fields = {
                k.decode(): int(v) for k, v in (await store.redis.hgetall(store.prefix + "all")).items()
            }
            doc = await KpiReader(store, large).document(AS_OF)
        assert all(v > 0 for v in fields.values()), fields
        by_source = doc["windows"]["all"]["by_source"]
        assert by_source["other"]["leads"] == 1 and by_source["other"]["lead_conversions"] == 1
        assert by_source["other"]["revenue_won"] == 20
        assert by_source["ads"]["spend"] == 5 and by_source["ads"]["leads"] == 0
        assert doc["windows"]["all"]["total"]["leads"] == 2

    asyncio.run(scenario())


def test_fold_counts_reach_the_operational_metric(
    make_settings: SettingsFactory, open_store: StoreOpener
) -> None:
    settings = make_settings(dimension_cap=1)
    events = [lead(str(i), 10, source=f"s{i}", rep_id="alice") for i in range(5)]

    async def scenario() -> None:
        registry = CollectorRegistry()
        ops = OpMetrics(registry)
        async with open_store(settings) as store:
            result = await store.apply(events)
        ops.record_apply(result, events, now=time.time())
        assert result.folded == {"source": 4}
        get = registry.get_sample_value
        assert get("kpi_dimension_values_folded_total", {"dimension": "source"}) == 4
        assert get("kpi_dimension_values_folded_total", {"dimension": "rep"}) == 0

    asyncio.run(scenario())


def test_a_document_reads_only_the_windows_asked_for(
    make_settings: SettingsFactory, open_store: StoreOpener
) -> None:
    settings = make_settings()

    class CountingStore(KpiStore):
        keys: list[str]

        async def sum_windows(self, groups: Any) -> list[dict[str, int]]:
            self.keys = [name for group in groups for name in group[0]]
            return await super().sum_windows(groups)

    async def scenario() -> None:
        async with open_store(settings) as plain:
            store = CountingStore(plain.redis, settings)
            await store.apply(HISTORY)
            reader = KpiReader(store, settings)
            full = await reader.document(AS_OF)
            # Calendar windows at 2026-03-31: today..ytd are March's 31 days + Jan and Feb;
            # mtd_prev is February whole (1 month); qtd_prev the 90 days Oct 1 - Dec 29, read as
            # Oct, Nov, Dec minus Dec 30 and 31 (5 keys, not 2 months + 29 days); ytd_prev
            # Jan 1 - Mar 31 2025 (3 months).
            calendar = (31 + 2) + 1 + (3 + 2) + 3
            assert len(store.keys) == 60 + 24 + 90 + 2 + calendar
            ytd = await reader.document(AS_OF, ["ytd"])
            assert ytd["windows"] == {"ytd": full["windows"]["ytd"]}
            assert len(store.keys) == 31 + 2 + 1
            assert store.keys[:31] == [
                f"d:{int((AS_OF - timedelta(days=k)).timestamp()) // 86400 * 86400}" for k in range(31)
            ]
            assert store.keys[31:33] == ["mo:1769904000", "mo:1767225600"]  # 2026-02-01, 2026-01-01
            one = await reader.document(AS_OF, ["1h"])
            assert list(one["windows"]) == ["1h"] and one["windows"]["1h"] == full["windows"]["1h"]
            assert len(store.keys) == 60 + 1 and all(k.startswith("m:") for k in store.keys[:-1])
            two = await reader.document(AS_OF, ["7d", "all"])
            assert set(two["windows"]) == {"7d", "all"} and two["windows"]["7d"] == full["windows"]["7d"]
            assert len(store.keys) == 7 + 1 + 1
            assert one["current"] == full["current"]

    asyncio.run(scenario())


def source_of(i: int) -> str:
    return f"{i:08d}-" + "s" * 55  # 64 characters, unique


def flood(n: int) -> list[Event]:
    """The probe's input: lead.created events with unique 64-character sources, spread over the
    last 100 days (and the last hour), so every window and ~2,500 buckets receive them."""
    return [
        lead(
            str(i), (i * 7) % 60 if i % 4 == 0 else (i * 7.3) % (100 * 1440), source=source_of(i), rep_id="r"
        )
        for i in range(n)
    ]


async def dimension_fields(store: KpiStore) -> tuple[int, set[str], int]:
    """(bucket keys, distinct source labels in them, memory of bucket keys in bytes)."""
    labels: set[str] = set()
    keys = 0
    memory = 0
    for pattern in ("m:*", "h:*", "d:*", "all"):
        async for key in store.redis.scan_iter(match=store.prefix + pattern, count=1000):
            keys += 1
            memory += await store.redis.memory_usage(key, samples=0) or 0
            fields = await store.redis.hkeys(key)
            _, dims = split_counters({f.decode(): 1 for f in fields})
            labels |= set(dims["source"])
    return keys, labels, memory


def test_unique_sources_keep_state_and_reads_bounded(
    make_settings: SettingsFactory, open_store: StoreOpener
) -> None:
    """Must show: after 20,000 leads with unique sources, the buckets hold at most the cap of
    source labels, /metrics renders under 1 s and the full document is under 5 MB and 2 s."""
    settings: Settings = make_settings()
    cap = settings.dimension_cap
    events = flood(20_000)

    async def scenario() -> None:
        async with open_store(settings) as store:
            for first in range(0, len(events), 500):
                result = await store.apply(events[first : first + 500])
                assert result.applied == len(events[first : first + 500])
            keys, labels, memory = await dimension_fields(store)
            assert len(labels - RESERVED) == cap and "other" in labels
            reader = KpiReader(store, settings)
            started = time.perf_counter()
            body, _ = await render_metrics(reader, settings, as_of=AS_OF)
            metrics_s = time.perf_counter() - started
            started = time.perf_counter()
            doc = orjson.dumps(await reader.document(AS_OF))
            document_s = time.perf_counter() - started
            sums = await store.sum_windows([(["all"], [1])])
        # Bounded by the cap, not by the input: every source field of every bucket is one of
        # cap + 3 labels, for the ~20 counters a lead touches.
        assert memory < 8 * 2**20, memory  # 15.7 MB without the cap
        assert len(sums[0]) <= 20 * (cap + 3) + 20
        by_source = orjson.loads(doc)["windows"]["all"]["by_source"]
        assert len(by_source) == cap + 1 and by_source["other"]["leads"] == len(events) - cap
        assert len(doc) < 5 * 2**20, len(doc)
        assert metrics_s < 1.0 and document_s < 2.0, (metrics_s, document_s)
        print(f"keys={keys} bucket_memory={memory} metrics={len(body)}B {metrics_s:.3f}s "
              f"document={len(doc)}B {document_s:.3f}s")  # fmt: skip

    asyncio.run(scenario())


def test_every_dimension_flooded_keeps_the_document_under_5_mb(
    make_settings: SettingsFactory, open_store: StoreOpener
) -> None:
    """The worst case the default cap allows: unique 64-character reps, sources and segments,
    all within the last hour, so every window lists every admitted value of every dimension."""
    settings = make_settings()
    cap = settings.dimension_cap
    events = [
        lead(
            str(i),
            i % 50,
            source=f"{i:08d}" + "s" * 56,
            rep_id=f"{i:08d}" + "r" * 56,
            segment=f"{i:08d}" + "g" * 56,
        )
        for i in range(cap + 100)
    ]

    async def scenario() -> None:
        async with open_store(settings) as store:
            for first in range(0, len(events), 500):
                await store.apply(events[first : first + 500])
            doc = orjson.dumps(await KpiReader(store, settings).document(AS_OF))
        parsed = orjson.loads(doc)
        for name, wdoc in parsed["windows"].items():
            # The like-for-like previous periods hold none of this hour's events.
            listed = 0 if name.endswith("_prev") else cap + 1
            assert [len(wdoc[k]) for k in ("by_rep", "by_source", "by_segment")] == [listed] * 3, name
        assert len(doc) < 5 * 2**20, len(doc)

    asyncio.run(scenario())
