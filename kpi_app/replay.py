"""`kpi replay`: JSONL files -> validation -> de-duplication -> atomic applies in chunks.

The same store code as the faust agent; a bad line never stops the replay.
Parsing and preparing the next chunk (``KPI_BATCH_SIZE`` events) overlaps the Redis call of the
one before (``kpi_state.in_flight.OneInFlight``), since Redis runs the script on its own core.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import IO

import orjson
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from kpi_app.bootstrap import Runtime
from kpi_app.jsonl import Line, read_lines
from kpi_state.events import Event, Rejection
from kpi_state.in_flight import OneInFlight
from kpi_state.store import ApplyResult


@dataclass
class ReplaySummary:
    lines: int = 0
    applied: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    rejects_path: Path | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "lines": self.lines,
            "applied": self.applied,
            "duplicates": self.duplicates,
            "rejected": sum(self.rejected.values()),
            "rejected_by_reason": dict(sorted(self.rejected.items())),
            "rejects_file": str(self.rejects_path) if self.rejects_path else None,
        }


def default_rejects_path(inputs: list[str]) -> Path:
    first = inputs[0]
    if first == "-":
        return Path("stdin.rejects.jsonl")
    return Path(first).with_name(Path(first).name + ".rejects.jsonl")


class Replayer:
    def __init__(self, runtime: Runtime, rejects: IO[bytes]) -> None:
        self._runtime = runtime
        self._rejects = rejects
        self.summary = ReplaySummary()

    def _reject(self, line: Line, rejection: Rejection) -> None:
        self.summary.rejected[rejection.reason] += 1
        record = {
            "file": line.source,
            "line": line.number,
            **rejection.as_dict(),
            "raw": line.raw.decode("utf-8", "replace"),
        }
        self._rejects.write(orjson.dumps(record) + b"\n")

    def _account(self, result: ApplyResult, lines: list[Line]) -> None:
        self.summary.applied += result.applied
        self.summary.duplicates += result.duplicates
        for pos, rejection in result.rejected:
            self._reject(lines[pos], rejection)

    async def run(self, names: list[str], progress: Progress | None) -> ReplaySummary:
        parser = self._runtime.parser
        store = self._runtime.store
        chunk_events = self._runtime.settings.batch_size
        events: list[Event] = []
        lines: list[Line] = []
        now = datetime.now(UTC)
        async with OneInFlight(self._account) as in_flight:
            for line in read_lines(names, progress):
                self.summary.lines += 1
                parsed = parser.parse_bytes(line.raw, now)
                if isinstance(parsed, Rejection):
                    self._reject(line, parsed)
                    continue
                events.append(parsed)
                lines.append(line)
                if len(events) >= chunk_events:
                    await in_flight.start(partial(store.execute, store.prepare(events)), lines)
                    events, lines = [], []
                    now = datetime.now(UTC)
            if events:
                await in_flight.start(partial(store.apply, events), lines)
        return self.summary


def make_progress(enabled: bool) -> Progress | None:
    if not enabled:
        return None
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=False,
    )


async def replay(
    runtime: Runtime, names: list[str], rejects_path: Path, show_progress: bool
) -> ReplaySummary:
    progress = make_progress(show_progress)
    with open(rejects_path, "wb") as rejects:  # noqa: ASYNC230 - one open; appends are buffered
        replayer = Replayer(runtime, rejects)
        if progress is None:
            summary = await replayer.run(names, None)
        else:
            with progress:
                summary = await replayer.run(names, progress)
    summary.rejects_path = rejects_path
    return summary
