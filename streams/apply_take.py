"""One take of topic messages -> validation -> dead letters -> atomic applies with offset watermarks.

Words: a *take* is what the agent takes from faust at once (``noack_take``: up to
``streams.worker.TAKE.max_messages`` messages) and acknowledges as a whole; it is applied in
*chunks* of about ``chunk_events`` events (``KPI_BATCH_SIZE``), one Redis script call each, never
splitting a message. (``KPI_MESSAGE_BATCH`` is the producers' events per Kafka message, and the
store's ``PreparedBatch`` is one prepared script call.)

Contract the faust agent relies on: ``TakeApplier.apply(select(messages))`` returns only once every
message is accounted for -- its valid events applied (or skipped as duplicates or redeliveries)
in Redis together with its partition's watermark, its invalid events acknowledged on the
dead-letter topic. Only then may faust acknowledge the take. Otherwise it raises
``WatermarkLost`` (Redis lost writes that this process had committed: restart to rewind) or
``TakeFailed`` (Redis or the broker stayed unusable for the whole retry budget), and the caller
must stop the process without acknowledging (``os._exit``): faust's own ``take()`` acknowledges in
a ``finally``, so an exception that leaves its loop body loses the take (DESIGN section 7).

Redis and broker errors are retried here, inside the take, with backoff. Every attempt starts
from a fresh watermark check on a pinned connection (``streams.offsets.PinnedRedis``), so an
attempt that half-succeeded (some chunks committed) goes on where the committed part ends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Protocol

import structlog
from aiokafka.errors import KafkaError
from faust.exceptions import ProducerSendError
from redis.exceptions import RedisError

from kpi_state.events import Event, EventParser, Rejection, message_elements
from kpi_state.in_flight import OneInFlight
from kpi_state.opmetrics import OpMetrics
from kpi_state.store import ApplyResult, SourcedEvent
from streams.deadletters import DeadLetter, DeadLetterSink, conflict_field
from streams.offsets import NO_WATERMARK, PinnedRedis, WatermarkLedger

log = structlog.get_logger(__name__)

# faust's producer raises ProducerSendError for the KafkaError of a failed send.
RETRIABLE: tuple[type[BaseException], ...] = (
    RedisError,
    KafkaError,
    ProducerSendError,
    OSError,
    TimeoutError,
)


class SourceMessage(Protocol):
    """What the applier reads of a Kafka message (faust's ``Message`` has these)."""

    topic: str
    partition: int
    offset: int
    timestamp: float  # epoch seconds
    key: bytes | None
    value: bytes | None


class WatermarkLost(RuntimeError):
    def __init__(self, lost: Mapping[str, tuple[int, int]]) -> None:
        super().__init__(f"Redis holds watermarks below what was committed: {dict(lost)}")
        self.lost = dict(lost)


class TakeFailed(RuntimeError):
    pass


@dataclass(slots=True)
class ParsedMessage:
    """A message of an assigned partition; parsed when its chunk is built (``TakeApplier``)."""

    message: SourceMessage
    wm_field: str  # the watermark field of the message's partition
    parsed: bool = False
    lettered: bool = False  # its invalid events are on the dead-letter topic (and counted)
    # (index in the message's array or None, outcome); the dead-letter bytes are derived on demand.
    events: list[tuple[int | None, Event]] = field(default_factory=list)
    rejects: list[tuple[int | None, Rejection]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.events) + len(self.rejects)


@dataclass(slots=True)
class _Chunk:
    """Consecutive messages applied in one script call, never splitting a message: the
    watermark of a partition is only raised past a message together with all its events."""

    items: list[SourcedEvent] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)
    origins: list[tuple[ParsedMessage, int | None]] = field(default_factory=list)
    marks: dict[str, int] = field(default_factory=dict)
    # Messages of the chunk whose invalid events still have to reach the dead-letter topic.
    unlettered: list[ParsedMessage] = field(default_factory=list)

    def add(self, parsed: ParsedMessage) -> None:
        msg = parsed.message
        for index, event in parsed.events:
            self.items.append(SourcedEvent(event, parsed.wm_field, msg.offset))
            self.sent_at.append(msg.timestamp)
            self.origins.append((parsed, index))
        if msg.offset > self.marks.get(parsed.wm_field, NO_WATERMARK):
            self.marks[parsed.wm_field] = msg.offset
        if parsed.rejects and not parsed.lettered:
            self.unlettered.append(parsed)


def _mark(stored: int | None) -> int:
    return NO_WATERMARK if stored is None else stored


def _letters(
    parsed: ParsedMessage, faults: Sequence[tuple[int | None, Rejection, str | None]]
) -> list[DeadLetter]:
    """Dead letters for ``(index, rejection, field)`` faults of one message (decoded once)."""
    msg = parsed.message
    values = message_elements(msg.value or b"", [index for index, _, _ in faults])
    return [
        DeadLetter(
            value=value,
            key=msg.key,
            reason=rejection.reason,
            field=fld,
            detail=rejection.detail,
            topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
            index=index,
            timestamp=msg.timestamp,
        )
        for value, (index, rejection, fld) in zip(values, faults, strict=True)
    ]


class TakeApplier:
    """Applies takes for the partitions in ``fields`` (partition -> watermark field), which the
    worker replaces on every assignment. Messages of other partitions (left in a buffer after a
    rebalance took them away) are ignored and must not be acknowledged: their new owner reads them
    from the committed offset."""

    def __init__(
        self,
        *,
        parser: EventParser,
        pinned: PinnedRedis,
        ledger: WatermarkLedger,
        dead_letters: DeadLetterSink,
        ops: OpMetrics,
        chunk_events: int,
        retry_budget: float,
        on_health: Callable[[bool], None] = lambda ok: None,
    ) -> None:
        self._parser = parser
        self._pinned = pinned
        self._ledger = ledger
        self._sink = dead_letters
        self._ops = ops
        self._chunk_events = chunk_events
        self._budget = retry_budget
        self._on_health = on_health
        self.fields: dict[int, str] = {}

    def _parse(self, parsed: ParsedMessage, now: datetime) -> ParsedMessage:
        """Validate a message's events once (retries reuse the result)."""
        if not parsed.parsed:
            for index, outcome in self._parser.parse_message(parsed.message.value or b"", now):
                if isinstance(outcome, Rejection):
                    parsed.rejects.append((index, outcome))
                else:
                    parsed.events.append((index, outcome))
            parsed.parsed = True
        return parsed

    def _chunks(self, fresh: Sequence[ParsedMessage], now: datetime) -> Iterator[_Chunk]:
        """Chunks of at least ``chunk_events`` events (whole messages), parsed as they are built."""
        chunk = _Chunk()
        for parsed in fresh:
            chunk.add(self._parse(parsed, now))
            if len(chunk.items) >= self._chunk_events:
                yield chunk
                chunk = _Chunk()
        if chunk.marks:
            yield chunk

    def select(self, messages: Sequence[SourceMessage]) -> list[ParsedMessage]:
        """A take, minus the messages of partitions not in ``fields`` at this moment.

        Nothing is parsed here: ``apply`` validates each chunk while Redis runs the one before,
        so the CPU work of a take overlaps the script calls instead of competing with them.
        """
        fields = self.fields
        selected = [ParsedMessage(m, fields[m.partition]) for m in messages if m.partition in fields]
        if len(selected) < len(messages):
            log.info("worker.ignored_unassigned", messages=len(messages) - len(selected))
        return selected

    async def apply(self, take: Sequence[ParsedMessage]) -> None:
        """Apply a selected take (see the module contract); takes must come in the order taken."""
        if not take:
            return
        now = datetime.now(UTC)  # one "now" per take: a retry validates nothing differently
        deadline = time.monotonic() + self._budget
        delay = 0.05
        first = True
        conflicts: list[DeadLetter] = []
        while True:
            try:
                async with self._pinned as session:
                    known = self._ledger.snapshot()
                    stored = await session.watermarks({p.wm_field for p in take})
                    lost = WatermarkLedger.lost(known, stored)
                    if lost:
                        raise WatermarkLost(lost)
                    fresh: list[ParsedMessage] = []
                    skipped: list[ParsedMessage] = []
                    for p in take:
                        (fresh if p.message.offset > _mark(stored[p.wm_field]) else skipped).append(p)
                    if first:
                        self._count_redelivered(skipped, now)
                        first = False
                    conflicts += await self._apply_chunks(session, fresh, now)
                await self._sink.send(conflicts)
                self._on_health(True)
                return
            except RETRIABLE as exc:
                self._on_health(False)
                if time.monotonic() + delay > deadline:
                    raise TakeFailed(f"take not applied within {self._budget:.0f} s: {exc!r}") from exc
                # The log event keeps its name (worker.batch_*): operators and tests search for it.
                log.warning("worker.batch_retry", error=repr(exc), delay=round(delay, 2))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _apply_chunks(
        self, session: PinnedRedis, fresh: Sequence[ParsedMessage], now: datetime
    ) -> list[DeadLetter]:
        """One script call per chunk, in order; the next chunk is parsed and prepared while Redis
        runs the current one (``OneInFlight``), and its invalid events are dead-lettered
        (acknowledged by the broker) before its script call. A chunk is only sent once the one
        before it succeeded."""
        refused: list[DeadLetter] = []

        def settled(result: ApplyResult, chunk: _Chunk) -> None:
            self._ledger.raise_to(chunk.marks)
            self._ops.record_apply(result, chunk.items, time.time(), chunk.sent_at)
            refused.extend(self._refused(chunk, result))

        async with OneInFlight(settled) as in_flight:
            for chunk in self._chunks(fresh, now):
                prepared = session.prepare(chunk.items, chunk.marks)
                if chunk.unlettered:
                    await self._dead_letter_invalid(chunk.unlettered)
                await in_flight.start(partial(session.execute, prepared), chunk)
        return refused

    def _count_redelivered(self, skipped: Sequence[ParsedMessage], now: datetime) -> None:
        """Once per take: count the events of the messages the watermark skips (parsed only to
        be counted: they were applied and dead-lettered when first delivered)."""
        events = sum(self._parse(p, now).size for p in skipped)
        if events:
            self._ops.redelivered.inc(events)

    async def _dead_letter_invalid(self, messages: Sequence[ParsedMessage]) -> None:
        """Send the invalid events of ``messages`` and wait for the broker; only then are they
        marked (a retry of the take does not send them twice) and counted."""
        letters = [
            letter for p in messages for letter in _letters(p, [(i, r, r.field) for i, r in p.rejects])
        ]
        await self._sink.send(letters)
        for p in messages:
            p.lettered = True
        self._ops.record_rejections(r for p in messages for _, r in p.rejects)

    @staticmethod
    def _refused(chunk: _Chunk, result: ApplyResult) -> list[DeadLetter]:
        """Dead letters for what the store refused (conflicts, amounts it cannot hold exactly);
        ``OpMetrics.record_apply`` already counted them."""
        by_message: dict[int, tuple[ParsedMessage, list[tuple[int | None, Rejection, str | None]]]] = {}
        for pos, rejection in result.rejected:
            parsed, index = chunk.origins[pos]
            fld = rejection.field or conflict_field(chunk.items[pos].event)
            by_message.setdefault(id(parsed), (parsed, []))[1].append((index, rejection, fld))
        return [letter for parsed, faults in by_message.values() for letter in _letters(parsed, faults)]
