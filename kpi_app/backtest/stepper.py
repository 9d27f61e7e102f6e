"""Replay a JSONL history step by step and sample the ``sales_*`` series as ``/metrics`` would
have shown them at each step.

Contract: at each evaluation time ``t`` (ascending), every event with ``occurred_at <= t`` has
been applied (events before the first ``t`` in one go), through the same parser and store as
``kpi replay``, in ``occurred_at`` order; then the series are read with the collector's own
``kpi_families`` at ``as_of = t``, and only the families and windows the rules read are kept.
The snapshot is ``read_snapshot``'s minus the windows no rule reads: it always holds ``all``,
the lifetime window, which holds every label value of every window and ranks them for the label
cap, so the kept rows are exactly those of ``/metrics`` (a scratch namespace has no targets).
It cuts a step's cost about threefold. In-order application keeps old histories readable: bucket retention is
measured against the newest event applied (kpi_state/windows.py margins), not the wall clock.
Events more than ``max_future_skew`` after the wall clock are rejected as by any replay.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from kpi_app.backtest.openmetrics import SeriesBook
from kpi_app.bootstrap import Runtime
from kpi_app.jsonl import read_lines
from kpi_app.replay import ReplaySummary
from kpi_state.collector import KpiSnapshot, kpi_families, read_snapshot
from kpi_state.events import Event, Rejection
from kpi_state.report import KpiReader


def read_events(path: Path, runtime: Runtime, stats: ReplaySummary) -> list[Event]:
    """The file's valid events in ``occurred_at`` order (stable for ties); lines and rejections
    counted in ``stats`` as ``kpi replay`` counts them."""
    now = datetime.now(UTC)
    events: list[Event] = []
    for line in read_lines([str(path)]):
        stats.lines += 1
        parsed = runtime.parser.parse_bytes(line.raw, now)
        if isinstance(parsed, Rejection):
            stats.rejected[parsed.reason] += 1
        else:
            events.append(parsed)
    events.sort(key=lambda e: e.occurred_at)
    return events


async def _apply(runtime: Runtime, events: Sequence[Event], stats: ReplaySummary) -> None:
    size = runtime.settings.batch_size
    for first in range(0, len(events), size):
        result = await runtime.store.apply(list(events[first : first + size]))
        stats.applied += result.applied
        stats.duplicates += result.duplicates
        for _, rejection in result.rejected:
            stats.rejected[rejection.reason] += 1


async def _snapshot(reader: KpiReader, t: datetime, windows: frozenset[str] | None) -> KpiSnapshot:
    if windows is None:
        return await read_snapshot(reader, t)
    fields, cur = await reader.window_fields(t, windows | {"all"})
    return KpiSnapshot(as_of=t, windows=fields, current=reader.current(cur))


async def sample_series(
    runtime: Runtime,
    events: Sequence[Event],
    times: Sequence[datetime],
    families: frozenset[str],
    windows: frozenset[str] | None,
    stats: ReplaySummary,
    advance: Callable[[], None] = lambda: None,
    stopped: Callable[[], bool] = lambda: False,
) -> SeriesBook:
    """The kept series at every time of ``times``; ``advance`` is called after each step, and
    ``stopped`` before it (True: KeyboardInterrupt, so the caller's cleanup runs)."""
    book = SeriesBook()
    settings = runtime.settings
    done = 0
    for t in times:
        if stopped():
            raise KeyboardInterrupt
        upto = done
        while upto < len(events) and events[upto].occurred_at <= t:
            upto += 1
        await _apply(runtime, events[done:upto], stats)
        done = upto
        snapshot = await _snapshot(runtime.reader, t, windows)
        t_ms = round(t.timestamp() * 1000)
        for family in kpi_families(snapshot, settings):
            if family.name not in families:
                continue
            rows = family.rows
            if windows is not None and "window" in family.labels:
                at = family.labels.index("window")
                rows = [row for row in rows if row[0][at] in windows]
            book.add(family.name, family.labels, rows, t_ms)
        advance()
    return book
