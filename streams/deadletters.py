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

Size: a dead letter never grows past what any broker accepts. Its value is cut to
``MAX_VALUE_BYTES`` (header ``dlq.truncated`` = the original size in bytes), and if the broker still
refuses a letter as too large it is sent once more with an empty value (``dlq.truncated`` again):
"too large" is a property of the letter, not a broker outage, so it is never retried as one -- a
retry would hold the partition until the worker gives up, and again after every restart.

Delivery: validation failures are sent, and acknowledged by the broker, before the batch is
committed to Redis, so a crash in between sends them again (at least once). Store conflicts are
only known after the commit; a worker killed in the milliseconds between loses those.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import structlog
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError
from faust.types import ProducerT

from kpi_state import events as ev

log = structlog.get_logger(__name__)

MAX_DETAIL = 1000
# Far above any real event (a few hundred bytes), far below the 1,000,000-byte request limit that
# Kafka brokers and producers default to.
MAX_VALUE_BYTES = 256 * 1024
_TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)

# The entity whose stored fact a conflicting event contradicts (docs/kpi-notes.md, conflicts).
_CONFLICT_FIELDS: dict[type[ev.Event], str] = {
    ev.LeadCreated: "lead_id",
    ev.DealCreated: "deal_id",
}


def conflict_field(event: ev.Event) -> str | None:
    return _CONFLICT_FIELDS.get(type(event))


def too_large(exc: BaseException | None) -> bool:
    """Whether a send failed because the record is too large (faust wraps the cause)."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, _TOO_LARGE):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


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
    original_size: int | None = None  # set when ``value`` was cut: the original length in bytes

    def bounded(self, limit: int = MAX_VALUE_BYTES) -> DeadLetter:
        """This letter with its value cut to ``limit`` bytes (itself when it fits)."""
        if len(self.value) <= limit:
            return self
        return replace(self, value=self.value[:limit], original_size=self.original_size or len(self.value))

    def headers(self) -> list[tuple[str, bytes]]:
        pairs: list[tuple[str, str]] = [("dlq.reason", self.reason)]
        if self.original_size is not None:
            pairs.append(("dlq.truncated", str(self.original_size)))
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
        bounded = [letter.bounded() for letter in letters]
        pending = [await self._enqueue(letter) for letter in bounded]
        outcomes = await asyncio.gather(*pending, return_exceptions=True)
        for letter, outcome in zip(bounded, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if not too_large(outcome) or not letter.value:
                    raise outcome
                await (await self._enqueue(_emptied(letter)))

    async def _enqueue(self, letter: DeadLetter) -> Awaitable[object]:
        """Hand ``letter`` to the producer (the result is its delivery); one the producer refuses
        at once as too large goes without its value."""
        try:
            delivery: Awaitable[object] = await self._producer.send(
                self._topic, letter.key, letter.value, None, None, letter.headers()
            )
        except Exception as exc:
            if not too_large(exc) or not letter.value:
                raise
            return await self._enqueue(_emptied(letter))
        return delivery


def _emptied(letter: DeadLetter) -> DeadLetter:
    """The letter without its value, for a broker that refuses even the bounded one."""
    log.warning("deadletters.value_dropped", size=len(letter.value), reason=letter.reason)
    return replace(letter, value=b"", original_size=letter.original_size or len(letter.value))
