"""``kpi send``: JSONL files -> the event topic (DESIGN section 2, "Messages on the topic").

- Default: every line is validated like the worker will (``EventParser`` plus the store's amount
  limit); valid events go in messages of up to ``batch`` events (a JSON array; ``batch=1``: one
  JSON object per message, keyed by ``deal_id``/``lead_id``/``customer_id``/``event_id``);
  invalid lines are counted by reason and not sent.
- ``raw``: every non-blank line is sent as it is, one line per message (keyed like a single event
  when it is a JSON object), so bad lines become dead letters at the worker.

The topics are created with their partition counts first (``ensure_topics``). Returns once the
broker acknowledged every message.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from rich.progress import Progress

from kpi_app.bootstrap import Runtime
from kpi_app.jsonl import read_lines
from kpi_state.events import EventParser, Rejection
from streams.producer import event_key

_NOW_EVERY = 1000  # lines between refreshes of the clock used for the future-skew check


@dataclass
class SendSummary:
    lines: int = 0
    events: int = 0  # events (raw: lines) sent
    messages: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        return {
            "lines": self.lines,
            "events": self.events,
            "messages": self.messages,
            "rejected": sum(self.rejected.values()),
            "rejected_by_reason": dict(sorted(self.rejected.items())),
        }


def _raw_key(line: bytes) -> bytes | None:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return (event_key(obj) or None) if isinstance(obj, dict) else None


class _Validator:
    def __init__(self, parser: EventParser) -> None:
        self._parser = parser
        self._now = datetime.now(UTC)
        self._count = 0

    def __call__(self, line: bytes) -> dict[str, Any] | Rejection:
        self._count += 1
        if self._count % _NOW_EVERY == 0:
            self._now = datetime.now(UTC)
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            return Rejection("invalid_json", None, str(exc))
        outcome = self._parser.parse_object(obj, self._now)
        if not isinstance(outcome, Rejection):
            outcome = self._parser.amount_error(outcome) or outcome
        if isinstance(outcome, Rejection):
            return outcome
        assert isinstance(obj, dict)  # parse_object accepts only objects
        return obj


async def send_files(
    runtime: Runtime,
    names: Sequence[str],
    *,
    batch: int,
    raw: bool = False,
    progress: Progress | None = None,
) -> SendSummary:
    await runtime.ensure_topics()
    summary = SendSummary()
    validate = _Validator(runtime.parser)
    async with runtime.producer(client_id="kpi-send", linger_ms=20) as producer:
        chunk: list[dict[str, Any]] = []
        for line in (entry.raw for entry in read_lines(names, progress)):
            summary.lines += 1
            if raw:
                await producer.send_raw(_raw_key(line), line)
                summary.events += 1
                continue
            outcome = validate(line)
            if isinstance(outcome, Rejection):
                summary.rejected[outcome.reason] += 1
                continue
            summary.events += 1
            if batch <= 1:
                await producer.send_event(outcome)
                continue
            chunk.append(outcome)
            if len(chunk) >= batch:
                await producer.send_batch(chunk)
                chunk = []
        if chunk:
            await producer.send_batch(chunk)
        await producer.flush()
        summary.messages = producer.messages_sent
    return summary
