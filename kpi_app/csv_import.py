"""``kpi import``: a CSV export -> events (csv_mapping) -> the store (like ``kpi replay``) or the topic.

Each row's events are validated by the same parser as every other input. The summary counts
rows by outcome:

- ``changed``: at least one of the row's events was applied (a new record or a changed value);
- ``unchanged``: every event was a duplicate (an earlier import already stated all of it);
- ``sent``: published to the topic (the worker de-duplicates);
- ``rejected``: an event of the row was refused by validation or by the store (e.g. a currency
  without a rate, a conflict); its other events still count;
- ``skipped``: the row could not be mapped (no id, no date, an unparsable amount, an unknown
  stage); it sends nothing.

Skipped and rejected rows are written, with their line number and reason, to a rejects file.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson
from rich.progress import Progress

from connectors.csv_mapping import RowMapper, Skip
from kpi_app.bootstrap import Runtime
from kpi_state.events import Event, EventParser, Rejection
from kpi_state.store import Outcome

SHOWN_PROBLEMS = 10  # skipped or refused rows printed by the command (all are in the rejects file)


@dataclass
class ImportSummary:
    rows: int = 0
    events: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    rejects_path: Path | None = None
    first_problems: list[str] = field(default_factory=list)  # "line N: reason: detail", the first few

    def as_dict(self) -> dict[str, object]:
        return {
            "rows": self.rows,
            "events": self.events,
            "rows_by_outcome": dict(sorted(self.outcomes.items())),
            "reasons": dict(sorted(self.reasons.items())),
            "rejects_file": str(self.rejects_path) if self.rejects_path else None,
        }


@dataclass
class _Row:
    line: int
    record: str
    events: list[dict[str, Any]]
    parsed: list[Event] = field(default_factory=list)
    problems: list[Rejection] = field(default_factory=list)
    applied: bool = False


def read_rows(path: Path) -> Iterator[tuple[int, dict[str, str | None]]]:
    """``(line number, row)``; the line number is where the row starts in the file."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        _ = reader.fieldnames  # reads the header row
        start = reader.line_num + 1
        for row in reader:
            yield start, row
            start = reader.line_num + 1


def header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return next(csv.reader(handle), [])


def count_rows(path: Path) -> int:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return max(sum(1 for _ in csv.reader(handle)) - 1, 0)


class _Validator:
    """The checks every input gets (EventParser) plus the store's amount limit."""

    def __init__(self, parser: EventParser) -> None:
        self._parser = parser

    def __call__(self, event: dict[str, Any], now: datetime) -> Event | Rejection:
        outcome = self._parser.parse_object(event, now)
        if isinstance(outcome, Rejection):
            return outcome
        return self._parser.amount_error(outcome) or outcome


class Importer:
    """Maps rows, validates their events, and hands batches to ``sink``."""

    def __init__(self, runtime: Runtime, mapper: RowMapper, rejects: IO[bytes]) -> None:
        self._settings = runtime.settings
        self._mapper = mapper
        self._validate = _Validator(runtime.parser)
        self._rejects = rejects
        self.summary = ImportSummary()

    def _write_reject(self, line: int, reason: str, detail: str, field_name: str | None = None) -> None:
        record = {"line": line, "reason": reason, "field": field_name, "detail": detail}
        self._rejects.write(orjson.dumps(record) + b"\n")
        if len(self.summary.first_problems) < SHOWN_PROBLEMS:
            self.summary.first_problems.append(f"line {line}: {reason}: {detail}")

    def rows(self, path: Path, progress: Progress | None) -> Iterator[_Row]:
        """Mapped and validated rows; skipped rows are accounted here and not yielded."""
        task = progress.add_task("import", total=count_rows(path)) if progress is not None else None
        now = datetime.now(UTC)
        for line, raw in read_rows(path):
            self.summary.rows += 1
            if progress is not None and task is not None:
                progress.advance(task)
            mapped = self._mapper.map_row(raw)
            if isinstance(mapped, Skip):
                self.summary.outcomes["skipped"] += 1
                self.summary.reasons[mapped.reason] += 1
                self._write_reject(line, mapped.reason, mapped.detail)
                continue
            row = _Row(line=line, record=str(mapped[-1].get("deal_id")), events=mapped)
            for event in mapped:
                checked = self._validate(event, now)
                if isinstance(checked, Rejection):
                    row.problems.append(checked)
                else:
                    row.parsed.append(checked)
            yield row

    def finish_row(self, row: _Row, sent: bool) -> None:
        self.summary.events += len(row.parsed)
        if row.problems:
            outcome = "rejected"
            for problem in row.problems:
                self.summary.reasons[problem.reason] += 1
                self._write_reject(row.line, problem.reason, problem.detail, problem.field)
        elif sent:
            outcome = "sent"
        else:
            outcome = "changed" if row.applied else "unchanged"
        self.summary.outcomes[outcome] += 1


async def import_to_store(
    runtime: Runtime, mapper: RowMapper, path: Path, rejects: IO[bytes], progress: Progress | None
) -> ImportSummary:
    importer = Importer(runtime, mapper, rejects)
    size = runtime.settings.batch_size
    pending: list[_Row] = []

    async def flush() -> None:
        events = [event for row in pending for event in row.parsed]
        result = await runtime.store.apply(events)
        pos = 0
        for row in pending:
            for _ in row.parsed:
                outcome = result.outcomes[pos]
                if outcome is Outcome.APPLIED:
                    row.applied = True
                elif outcome in (Outcome.CONFLICT, Outcome.REJECTED):
                    row.problems.extend(r for p, r in result.rejected if p == pos)
                pos += 1
            importer.finish_row(row, sent=False)
        pending.clear()

    queued = 0
    for row in importer.rows(path, progress):
        pending.append(row)
        queued += len(row.parsed)
        if queued >= size:
            await flush()
            queued = 0
    await flush()
    return importer.summary


async def import_to_topic(
    runtime: Runtime, mapper: RowMapper, path: Path, rejects: IO[bytes], progress: Progress | None
) -> ImportSummary:
    settings = runtime.settings
    await runtime.ensure_topics()
    importer = Importer(runtime, mapper, rejects)
    async with runtime.producer(client_id="kpi-import", linger_ms=20) as producer:
        chunk: list[dict[str, Any]] = []
        for row in importer.rows(path, progress):
            # Only the events that passed validation; the raw dicts, as on every other producer.
            valid_ids = {event.event_id for event in row.parsed}
            chunk.extend(e for e in row.events if e["event_id"] in valid_ids)
            importer.finish_row(row, sent=True)
            if len(chunk) >= settings.message_batch:
                await producer.send_batch(chunk)
                chunk = []
        await producer.send_batch(chunk)
        await producer.flush()
    return importer.summary
