"""Scrape time of ``/metrics`` with 50 reps x 10 sources x 5 segments (DESIGN section 6: < 100 ms).

Fills a namespace of its own with generated events over the last two years (every day of
the last 400, every 7th day before), dense enough that every window (1h ... all, today ...
ytd_prev) holds every rep, source and segment, loads 200 targets, then times the whole
scrape path (one Redis read, the KPI families, the operational registry, the text
exposition) ``runs`` times. The namespace is deleted afterwards.

``python -m bench.bench_scrape [--redis-url URL] [--runs 20] [--dense]``
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.stats import nearest_rank
from kpi_app.bootstrap import build_runtime
from kpi_state.collector import kpi_families, read_snapshot, render_metrics, render_text
from kpi_state.events import Event, EventParser, Rejection
from kpi_state.periods import period_start
from kpi_state.settings import Settings
from kpi_state.store import KpiStore
from kpi_state.targets import Target

REPS, SOURCES, SEGMENTS = 50, 10, 5
# Every day the day buckets are kept for (400: ytd_prev's partial month a year and a month
# back), then one day a week back to two years, so ytd_prev's earliest month buckets hold data.
DAYS = (*range(400), *range(400, 731, 7))
TARGET_MS = 100.0
STAGES = ("prospecting", "qualification", "proposal", "negotiation")


def dense_recent_events(now: datetime) -> Iterator[dict[str, Any]]:
    """Every rep (so every source and segment) in each of the last 60 minutes and 24 hours:
    the minute and hour buckets of a busy system (about 1,000 events/s)."""
    for step, count in ((timedelta(minutes=1), 60), (timedelta(hours=1), 24)):
        for k in range(count):
            for i in range(REPS):
                at = (now - k * step - timedelta(seconds=5)).isoformat()
                n = f"{step.seconds}-{k}-{i}"
                rep, src, seg = f"rep-{i:02d}", f"source-{i % SOURCES}", f"segment-{(i // 10) % SEGMENTS}"
                yield {"type": "lead.created", "event_id": f"xl{n}", "occurred_at": at, "lead_id": f"XL{n}",
                       "rep_id": rep, "source": src, "segment": seg}  # fmt: skip
                yield {"type": "deal.created", "event_id": f"xd{n}", "occurred_at": at, "deal_id": f"XD{n}",
                       "rep_id": rep, "amount": 500.0, "lead_id": f"XL{n}"}  # fmt: skip
                yield {"type": "deal.won", "event_id": f"xw{n}", "occurred_at": at, "deal_id": f"XD{n}",
                       "rep_id": rep, "amount": 500.0, "customer_id": f"XC{n}"}  # fmt: skip


def raw_events(now: datetime) -> Iterator[dict[str, Any]]:
    """Per day and rep: a lead, its qualification, a deal through two stages and its close.

    Rep ``i`` gets source ``i % 10`` and segment ``(i // 10) % 5`` (shifted by the day), so
    each day holds every value of every dimension; day 0 lies within the last hour, so
    the 1h and 24h windows hold them too.
    """
    for day in DAYS:
        for i in range(REPS):
            # Day 0: spread over the last 50 minutes; other days: spread over the day.
            offset = timedelta(minutes=i) if day == 0 else timedelta(days=day, minutes=17 * i)
            base = now - offset - timedelta(seconds=30)
            n = f"{day}-{i}"
            rep, src, seg = (
                f"rep-{i:02d}",
                f"source-{(i + day) % SOURCES}",
                f"segment-{(i // 10 + day) % SEGMENTS}",
            )

            def at(seconds: int, base: datetime = base) -> str:
                return (base + timedelta(seconds=seconds)).isoformat()

            lead, deal = f"L{n}", f"D{n}"
            yield {"type": "lead.created", "event_id": f"lc{n}", "occurred_at": at(0), "lead_id": lead,
                   "rep_id": rep, "source": src, "segment": seg}  # fmt: skip
            if i % 3:
                yield {"type": "lead.qualified", "event_id": f"lq{n}", "occurred_at": at(1), "lead_id": lead}
            yield {"type": "deal.created", "event_id": f"dc{n}", "occurred_at": at(2), "deal_id": deal,
                   "rep_id": rep, "amount": 1000.0 + 37 * i, "lead_id": lead}  # fmt: skip
            yield {"type": "deal.stage_changed", "event_id": f"ds{n}", "occurred_at": at(3), "deal_id": deal,
                   "to_stage": STAGES[1 + i % 3]}  # fmt: skip
            if i % 4 == 0:
                yield {"type": "deal.won", "event_id": f"dw{n}", "occurred_at": at(20), "deal_id": deal,
                       "customer_id": f"C{n}", "rep_id": rep, "amount": 1200.0 + 11 * i}  # fmt: skip
            elif i % 4 == 1:
                yield {"type": "deal.lost", "event_id": f"dl{n}", "occurred_at": at(20), "deal_id": deal,
                       "rep_id": rep}  # fmt: skip
            if i < SOURCES:
                yield {"type": "spend.recorded", "event_id": f"sp{n}", "occurred_at": at(4), "amount": 250.0,
                       "category": ("marketing", "sales")[i % 2], "source": src}  # fmt: skip
            if i % 5 == 0:
                yield {"type": "revenue.recorded", "event_id": f"rr{n}", "occurred_at": at(5),
                       "customer_id": f"C{day}-0", "amount": 80.0}  # fmt: skip
                yield {"type": "survey.answered", "event_id": f"sv{n}", "occurred_at": at(6),
                       "kind": ("nps", "csat")[i % 2], "score": i % 5 + 1}  # fmt: skip


async def fill(
    store: KpiStore, parser: EventParser, now: datetime, dense: bool = False, batch: int = 500
) -> int:
    events: list[Event] = []
    for raw in itertools.chain(raw_events(now), dense_recent_events(now) if dense else ()):
        parsed = parser.parse_object(raw, now)
        if isinstance(parsed, Rejection):
            raise ValueError(f"generated an invalid event {raw}: {parsed}")
        events.append(parsed)
    for start in range(0, len(events), batch):
        result = await store.apply(events[start : start + batch])
        if result.rejected:
            raise ValueError(f"store rejected generated events: {result.rejected[:3]}")
    return len(events)


def bench_targets(now: datetime) -> list[Target]:
    """200 targets whose period contains ``now`` (DESIGN section 6): per rep a revenue and a
    deals target for the month and the quarter (50 x 4 = 200)."""
    month = period_start(now.date(), "month")
    quarter = period_start(now.date(), "quarter")
    q = (quarter.month - 1) // 3 + 1
    out: list[Target] = []
    for i in range(REPS):
        for kpi, period, value in (
            ("revenue_won", f"{month:%Y-%m}", 5000.0 + i),
            ("deals_won", f"{month:%Y-%m}", 3.0),
            ("revenue_won", f"{quarter.year}-Q{q}", 15000.0 + i),
            ("deals_won", f"{quarter.year}-Q{q}", 9.0),
        ):
            out.append(Target(kpi=kpi, period=period, scope=f"rep:rep-{i:02d}", value=value))  # type: ignore[arg-type]
    return out


async def _run(redis_url: str, runs: int, dense: bool) -> dict[str, Any]:
    settings = Settings(redis_url=redis_url, namespace=f"bench-scrape-{uuid.uuid4().hex[:12]}")
    runtime = build_runtime(settings)  # the composition root, as `kpi serve` builds it
    store, reader, ops_registry = runtime.store, runtime.reader, runtime.registry
    try:
        now = datetime.now(UTC)
        t0 = time.perf_counter()
        events = await fill(store, runtime.parser, now, dense)
        await reader.targets.replace(bench_targets(now))
        fill_s = time.perf_counter() - t0
        as_of = datetime.now(UTC)
        body, _ = await render_metrics(reader, settings, include=[ops_registry], as_of=as_of)  # warm-up
        totals: list[float] = []
        cpu: list[float] = []
        for _ in range(runs):
            t0, c0 = time.perf_counter(), time.process_time()
            body, _ = await render_metrics(reader, settings, include=[ops_registry], as_of=as_of)
            totals.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        reads: list[float] = []
        builds: list[float] = []
        encodes: list[float] = []
        for _ in range(runs):  # the same path in its three steps
            t0 = time.perf_counter()
            snapshot = await read_snapshot(reader, as_of)
            t1 = time.perf_counter()
            families = kpi_families(snapshot, settings)
            t2 = time.perf_counter()
            render_text(families)
            t3 = time.perf_counter()
            reads.append(t1 - t0)
            builds.append(t2 - t1)
            encodes.append(t3 - t2)
        text = body.decode()
        target_series = sum(1 for line in text.splitlines() if line.startswith("sales_target_pace_ratio{"))
        if target_series != 200:
            raise ValueError(f"the scrape exports {target_series} targets, not 200")
        series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
        by_dim = {
            dim: len({lb for w, lb in _labels(text, f"sales_leads_by_{dim}", dim) if w == "1h"})
            for dim in ("rep", "source", "segment")
        }
        ms = [t * 1000 for t in totals]
        return {
            "events": events,
            "fill_seconds": round(fill_s, 2),
            "runs": runs,
            "p50_ms": round(nearest_rank(ms, 0.5), 1),
            "p99_ms": round(nearest_rank(ms, 0.99), 1),
            "min_ms": round(min(ms), 1),
            "client_cpu_p50_ms": round(nearest_rank(cpu, 0.5) * 1000, 1),
            "read_p50_ms": round(nearest_rank(reads, 0.5) * 1000, 1),
            "build_p50_ms": round(nearest_rank(builds, 0.5) * 1000, 1),
            "encode_p50_ms": round(nearest_rank(encodes, 0.5) * 1000, 1),
            "series": series,
            "targets": target_series,
            "bytes": len(body),
            "label_values_1h": by_dim,
            "dense": dense,
            "target_ms": TARGET_MS,
            "ok": nearest_rank(ms, 0.99) < TARGET_MS,
        }
    finally:
        try:
            await store.clear()
        finally:
            await runtime.aclose()


def _labels(text: str, family: str, dim: str) -> Iterator[tuple[str, str]]:
    prefix = family + "{"
    for line in text.splitlines():
        if line.startswith(prefix):
            labels = dict(p.split("=", 1) for p in line[len(prefix) : line.index("}")].split(","))
            yield labels["window"].strip('"'), labels[dim].strip('"')


def run(redis_url: str, runs: int = 20, dense: bool = False) -> dict[str, Any]:
    """Fill, time ``runs`` scrapes, clean up; returns the figures (milliseconds).

    ``p50_ms``/``p99_ms``/``min_ms``: wall time of the whole path; ``client_cpu_p50_ms``:
    CPU time of this process in it (less sensitive to other load on the machine);
    ``read``/``build``/``encode``: medians of the three steps. ``dense``: also fill
    every minute and hour bucket with every dimension value (see ``dense_recent_events``).
    """
    return asyncio.run(_run(redis_url, runs, dense))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--redis-url", default=Settings().redis_url)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--dense", action="store_true", help="every minute/hour bucket holds every value")
    args = parser.parse_args()
    print(json.dumps(run(args.redis_url, args.runs, args.dense), indent=2))


if __name__ == "__main__":
    main()
