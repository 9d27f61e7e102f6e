"""Dead letters (DESIGN section 2, "Bad input"): what the worker refuses goes to ``<topic>.dlq``.

One dead letter per refused event (an array message with two bad events gives two). Format
(docs/streaming.md, "Dead letters"):

- value: the event's original bytes -- the whole message for a single-event message or one that
  is not JSON, the array element (re-serialised: ``kpi_state.events.message_elements``) for an
  event of a batch message -- so a fixed event can be sent again as it is;
- key: the source message's key;
- headers (UTF-8): ``dlq.reason`` (the ``kpi_events_rejected_total`` label), ``dlq.field`` (absent
  when no single field is at fault), ``dlq.detail``, and where it came from: ``dlq.topic``,
  ``dlq.partition``, ``dlq.offset``, ``dlq.index`` (position in a batch message; absent for a
  single event) and ``dlq.timestamp`` (the source message's timestamp, epoch ms).

Delivery: validation failures are sent, and acknowledged by the broker, before the batch is
committed to Redis, so a crash in between sends them again (at least once). Store conflicts are
only known after the commit; a worker killed in the milliseconds between loses those.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from faust.types import ProducerT

from kpi_state import events as ev

MAX_DETAIL = 1000

# The entity whose stored fact a conflicting event contradicts (docs/kpi-notes.md, conflicts).
_CONFLICT_FIELDS = {
    "lead.created": "lead_id",
    "deal.created": "deal_id",
    "deal.won": "deal_id",
    "deal.lost": "deal_id",
}


def conflict_field(event: ev.Event) -> str | None:
    return _CONFLICT_FIELDS.get(event.type)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    value: bytes
    key: bytes | None
    reason: str
    field: str | None
    detail: str
    topic: str
    partition: int
    offset: int
    index: int | None  # position in a batch (JSON array) message
    timestamp: float | None  # of the source message, epoch seconds

    def headers(self) -> list[tuple[str, bytes]]:
        pairs: list[tuple[str, str]] = [("dlq.reason", self.reason)]
        if self.field is not None:
            pairs.append(("dlq.field", self.field))
        pairs += [
            ("dlq.detail", self.detail[:MAX_DETAIL]),
            ("dlq.topic", self.topic),
            ("dlq.partition", str(self.partition)),
            ("dlq.offset", str(self.offset)),
        ]
        if self.index is not None:
            pairs.append(("dlq.index", str(self.index)))
        if self.timestamp is not None:
            pairs.append(("dlq.timestamp", str(round(self.timestamp * 1000))))
        return [(name, value.encode()) for name, value in pairs]


def read_headers(headers: Iterable[tuple[str, bytes]] | None) -> dict[str, str]:
    """The ``dlq.*`` headers of a dead-letter record, decoded (for readers of the topic)."""
    return {k: v.decode(errors="replace") for k, v in headers or () if k.startswith("dlq.")}


class DeadLetterSink(Protocol):
    async def send(self, letters: Sequence[DeadLetter]) -> None:
        """Return once the broker acknowledged every letter; raise if one was not."""


class ProducerDeadLetters:
    """A ``DeadLetterSink`` over faust's producer (``acks=-1``, the app's own connection)."""

    def __init__(self, producer: ProducerT, topic: str) -> None:
        self._producer = producer
        self._topic = topic

    async def send(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        pending = [
            await self._producer.send(self._topic, letter.key, letter.value, None, None, letter.headers())
            for letter in letters
        ]
        await asyncio.gather(*pending)
