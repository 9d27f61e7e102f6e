"""The streaming worker: a faust app that applies the CRM event topic to the KPI state in Redis.

One process of the consumer group (``settings.consumer_group``); ``streams.supervisor`` runs it as
a child and starts it again whenever it stops. Contracts (docs/streaming.md):

- One agent (concurrency 1) takes raw messages with their partition and offset (``noack_take``:
  faust acknowledges nothing itself; one *take* is up to ``TAKE.max_messages`` messages) and one
  task hands the takes, in order, to ``TakeApplier`` (``streams.apply_take``); each event is
  acknowledged only after Redis committed it. A take that cannot be applied stops the process at
  once (``os._exit``): neither it nor any later take is applied or acknowledged.
- On every assignment the topic identity is read again and the watermark fields are tied to it;
  messages of a partition are applied only once its callback finished (faust fetches them
  earlier: such takes wait, ``_await_assignment``), and a message that is left out is never
  acknowledged. A partition whose committed Kafka offset is past its Redis watermark + 1 (Redis
  lost writes) has the lower offset committed, and the process asks for a restart, as it does
  whenever the topic identity changed or Redis is seen to have lost writes (a graceful stop:
  acknowledged takes were all applied, and the next process resumes at the lower of Redis and
  Kafka). The decision is ``streams.assignment``'s; this module does the I/O.
- Web pages: ``streams.worker_web`` (``/healthz`` is 503 while a take is being retried).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, cast

import faust
import redis.asyncio as aioredis
import structlog
from aiokafka.errors import KafkaError, UnknownTopicOrPartitionError
from faust.transport.consumer import Consumer
from faust.types import TP, EventT, StreamT
from prometheus_client import CollectorRegistry
from redis.exceptions import RedisError

from kpi_state.events import EventParser
from kpi_state.opmetrics import OpMetrics
from kpi_state.report import KpiReader
from kpi_state.settings import Settings
from streams.apply_take import ParsedMessage, TakeApplier, WatermarkLost
from streams.assignment import Rewind, check_identity, check_watermarks, decide_resume
from streams.broker import bootstrap_servers
from streams.deadletters import ProducerDeadLetters
from streams.faust_app import events_topic
from streams.faust_compat import commit_offsets
from streams.offsets import PinnedRedis, WatermarkLedger, read_watermarks, watermark_field
from streams.scrape_thread import ScrapeThread
from streams.topics import KafkaInspector, ensure_topics
from streams.worker_web import WorkerState, add_pages

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class TakeSize:
    """One take: up to ``max_messages`` messages, or what arrived within ``within_seconds``."""

    max_messages: int
    within_seconds: float


# Freshness: at 1,000 events/s a take closes every 0.1 s. Each take is applied in script calls
# (chunks) of about settings.batch_size events.
TAKE = TakeSize(max_messages=500, within_seconds=0.1)
QUEUED_TAKES = 2  # takes taken but not yet applied, besides the one being applied
# Redis or the broker unusable for this long while a take is in hand: stop without acknowledging.
TAKE_RETRY_SECONDS = 60.0
# Redis must answer within this at an assignment (a rebalance callback must stay well inside
# the 10 s session timeout).
ASSIGNMENT_REDIS_SECONDS = 6.0
WATCH_INTERVAL_SECONDS = 1.0
# How long a take of freshly assigned partitions waits for the assignment callback (which itself
# is bounded by ~8 s of broker and ~6 s of Redis time) before the worker restarts instead.
ASSIGNMENT_WAIT_SECONDS = 30.0
ASSIGNMENT_POLL_SECONDS = 0.05
STOP_GRACE_SECONDS = 20.0

EXIT_TAKE_FAILED = 70
EXIT_WATERMARK_LOST = 75
EXIT_INTERRUPTED = 76
EXIT_STOP_TIMEOUT = 77


def hard_exit(code: int, event: str, **fields: Any) -> NoReturn:
    """Stop now: no ``finally``, no acknowledgment, no offset commit."""
    log.error(event, exit_code=code, **fields)
    sys.stderr.flush()
    os._exit(code)


class KpiWorker:
    """The faust app with its agent, assignment hook, watchdog timer and web pages."""

    def __init__(
        self,
        settings: Settings,
        *,
        redis: aioredis.Redis,
        parser: EventParser,
        make_reader: Callable[[], KpiReader],
        app: faust.App,
        registry: CollectorRegistry,
        ops: OpMetrics,
        pinned: PinnedRedis,
        topics: Mapping[str, int],
    ) -> None:
        """Parts come from the composition root (``kpi_app.bootstrap.Runtime.kpi_worker``)."""
        if not settings.kafka_url:
            raise ValueError("the worker needs a Kafka URL")
        self.settings = settings
        self._redis = redis
        self._scrapes = ScrapeThread(make_reader)
        self._bootstrap = bootstrap_servers(settings.kafka_url)
        self._topics = dict(topics)
        self._inspector: KafkaInspector | None = None
        self._state = WorkerState()
        self.registry = registry
        self.ops = ops
        self.ops.set_ready(False)
        self.ledger = WatermarkLedger()
        self.app = app
        self.applier = TakeApplier(
            parser=parser,
            pinned=pinned,
            ledger=self.ledger,
            dead_letters=ProducerDeadLetters(self.app.producer, settings.dlq_topic),
            ops=self.ops,
            chunk_events=settings.batch_size,
            retry_budget=TAKE_RETRY_SECONDS,
            on_health=self._set_redis_ok,
        )
        self.app.agent(events_topic(self.app, settings), name="kpi-apply", concurrency=1)(self._consume)
        self.app.on_partitions_assigned.connect(cast(Any, self._on_assigned))
        self.app.timer(WATCH_INTERVAL_SECONDS, name="kpi-watch")(self._watch)
        add_pages(self.app, self._state, settings=settings, registry=self.registry, scrapes=self._scrapes)

    # -- consuming -------------------------------------------------------------------------

    async def _consume(self, stream: StreamT[bytes]) -> None:
        """Takes go through a short queue to one applier task, which acknowledges each event
        after Redis committed it. The agent hands a take back to faust at once, so faust's
        per-message work on the next take overlaps the Redis call of this one (``take()`` would
        hold its buffer until its loop body returns); the queue bound is the back-pressure."""
        assert isinstance(stream, faust.Stream)  # noack_take is not on the StreamT interface
        queue: asyncio.Queue[_Taken] = asyncio.Queue(maxsize=QUEUED_TAKES)
        applying = asyncio.ensure_future(self._apply_in_order(stream, queue))
        try:
            async for events in stream.noack_take(TAKE.max_messages, within=TAKE.within_seconds):
                try:
                    messages = [_message(e) for e in events]
                    await self._await_assignment(messages)
                    selected = self.applier.select(messages)
                    # Only selected messages are ever acknowledged: a left-out one is read again by
                    # whoever owns its partition next, from the committed offset, which it holds back.
                    if len(selected) == len(messages):  # the usual case: every message is ours
                        to_ack = list(events)
                    else:
                        chosen = {id(p.message) for p in selected}
                        to_ack = [e for e in events if id(_message(e)) in chosen]
                except Exception as exc:  # a bug: do not let faust see the take go by
                    hard_exit(EXIT_TAKE_FAILED, "worker.select_failed", error=repr(exc))
                await queue.put((to_ack, selected))
        finally:
            applying.cancel()  # queued takes stay unacknowledged: they are read again

    async def _await_assignment(self, messages: Sequence[Any]) -> None:
        """Hold a take while its partitions are assigned but their assignment callback is still
        running (no watermark field yet): faust fetches them as soon as the group assigns them.

        Ignoring them instead would lose them for good: a later message of the same partition
        raises its Redis watermark past them, so reading them again would only skip them."""
        deadline = time.monotonic() + ASSIGNMENT_WAIT_SECONDS
        topic = self.settings.topic
        while not self._state.stopping:
            fields = self.applier.fields
            pending = {m.partition for m in messages if m.partition not in fields}
            if not pending:
                return
            assigned = {tp.partition for tp in self.app.consumer.assignment() if tp.topic == topic}
            waiting = pending & assigned
            if not waiting:
                return  # partitions taken away from us: left out, not acknowledged
            if time.monotonic() > deadline:
                self.request_restart("worker.assignment_stalled", partitions=sorted(waiting))
                return
            await asyncio.sleep(ASSIGNMENT_POLL_SECONDS)

    async def _apply_in_order(self, stream: StreamT[bytes], queue: asyncio.Queue[_Taken]) -> None:
        while True:
            events, parsed = await queue.get()
            try:
                await self.applier.apply(parsed)
                for event in events:
                    await stream.ack(event)
            except BaseException as exc:
                # Whatever it is (WatermarkLost, TakeFailed, a stop in the middle of the take, a
                # bug): nothing from this take on may be applied or acknowledged. Stop right here.
                hard_exit(
                    _exit_code(exc),
                    "worker.batch_abandoned",  # the log event keeps its name: operators search for it
                    error=repr(exc),
                    messages=len(events),
                )

    async def _inspect(self) -> KafkaInspector:
        if self._inspector is None:
            inspector = KafkaInspector(self._bootstrap, timeout=5.0)
            await inspector.start()
            self._inspector = inspector
        return self._inspector

    async def _on_assigned(self, sender: Any, assigned: Iterable[TP], **kwargs: Any) -> None:
        """Tie the watermarks to the topic identity, and rewind partitions Redis is behind on."""
        topic = self.settings.topic
        mine = sorted(tp for tp in assigned if tp.topic == topic)
        try:
            async with asyncio.timeout(8.0):
                # A restarted broker lost them: create them before anything auto-creates them.
                await ensure_topics(self._bootstrap, self._topics, timeout=5.0)
                identity = await (await self._inspect()).topic_identity(topic)
        except (KafkaError, OSError, TimeoutError) as exc:
            self.request_restart("worker.identity_unavailable", error=repr(exc))
            return
        if restart := check_identity(self._state.identity, identity):
            self.request_restart(restart.event, **restart.details)
            return
        fields = {tp.partition: watermark_field(topic, identity, tp.partition) for tp in mine}
        known = self.ledger.snapshot()
        stored = await self._stored_at_assignment(fields.values())
        if restart := check_watermarks(known, stored):
            self.request_restart(restart.event, **restart.details)
            return
        consumer = self.app.consumer
        assert isinstance(consumer, Consumer)  # faust's base consumer: seeks and raw commits
        committed = await consumer.seek_to_committed()
        decision = decide_resume(fields, stored, {tp.partition: committed.get(tp) for tp in mine})
        if isinstance(decision, Rewind):
            # Commit the rewound position for the group, then restart: the next process starts
            # there (streams.assignment says why never in this process).
            rewinds = {TP(topic, partition): offset for partition, offset in decision.offsets.items()}
            committed_ok = await commit_offsets(consumer, rewinds)
            self.request_restart(
                "worker.rewind" if committed_ok else "worker.rewind_commit_failed",
                rewinds=decision.offsets,
                committed=_by_partition(committed),
            )
            return
        self._state.identity = identity
        self._state.partitions = [tp.partition for tp in mine]
        self.ledger.reset(decision.watermarks)
        # Only now are messages of these partitions applied; until here ``_await_assignment`` held
        # them (the applier checks the watermarks itself, so a later restart loses nothing).
        self.applier.fields = decision.fields
        self._state.assigned = True
        self._update_ready()
        log.info(
            "worker.assigned",
            topic=topic,
            topic_id=identity,
            partitions=self._state.partitions,
            watermarks={p: decision.watermarks[f] for p, f in decision.fields.items()},
        )

    async def _stored_at_assignment(self, fields: Iterable[str]) -> dict[str, int | None]:
        names = list(fields)
        try:
            async with asyncio.timeout(ASSIGNMENT_REDIS_SECONDS):
                while True:
                    try:
                        return await read_watermarks(self._redis, self.settings, names)
                    except RedisError as exc:
                        self._set_redis_ok(False)
                        log.warning("worker.redis_unavailable", error=repr(exc))
                        await asyncio.sleep(0.5)
        except TimeoutError:
            hard_exit(EXIT_TAKE_FAILED, "worker.assignment_failed", reason="Redis does not answer")

    def request_restart(self, event: str, **fields: Any) -> None:
        """Stop gracefully (the supervisor starts a new process); stop hard if that hangs."""
        if self._state.stopping:
            return
        log.warning(event, action="restart", **fields)
        self._state.stopping = True
        self.applier.fields = {}  # apply nothing more under what this process knows
        self._update_ready()
        timer = threading.Timer(STOP_GRACE_SECONDS, hard_exit, (EXIT_STOP_TIMEOUT, "worker.stop_timeout"))
        timer.daemon = True
        timer.start()
        os.kill(os.getpid(), signal.SIGTERM)

    # -- watchdog ----------------------------------------------------------------------------

    async def _watch(self) -> None:
        """Every second: consumer lag, watermarks that went down, a topic that was re-created."""
        if not self._state.assigned or self._state.stopping:
            return
        with contextlib.suppress(TimeoutError):  # a position is unknown while a partition resets
            async with asyncio.timeout(2.0):
                await self._update_lag()
        known = self.ledger.snapshot()  # before reading Redis (WatermarkLedger contract)
        try:
            async with asyncio.timeout(5.0):
                stored = await read_watermarks(self._redis, self.settings, known)
        except (RedisError, OSError, TimeoutError) as exc:
            self._set_redis_ok(False)
            log.warning("worker.redis_unavailable", error=repr(exc))
            return
        self._set_redis_ok(True)
        if restart := check_watermarks(known, stored):
            self.request_restart(restart.event, **restart.details)
            return
        try:
            async with asyncio.timeout(5.0):
                identity = await (await self._inspect()).topic_identity(self.settings.topic)
        except UnknownTopicOrPartitionError:
            # The broker lost the topic (restarted): create it now, before any client auto-creates
            # it with the broker's default partition count.
            await _quietly(ensure_topics(self._bootstrap, self._topics, timeout=5.0))
            self.request_restart("worker.topic_gone")
            return
        except (KafkaError, OSError, TimeoutError) as exc:
            log.debug("worker.broker_unavailable", error=repr(exc))
            return
        if identity != self._state.identity:
            self.request_restart("worker.topic_identity_changed", old=self._state.identity, new=identity)

    async def _update_lag(self) -> None:
        consumer = self.app.consumer
        lags: dict[tuple[str, int], int] = {}
        for tp in consumer.assignment():
            if tp.topic != self.settings.topic:
                continue
            try:
                high = consumer.highwater(tp)
                position = await consumer.position(tp)
            except (KafkaError, AssertionError, RuntimeError):  # not assigned any more, not fetched yet
                continue
            if high is not None and high >= 0 and position is not None:
                lags[(tp.topic, tp.partition)] = max(0, high - position)
        self.ops.set_consumer_lag(lags)

    def _set_redis_ok(self, ok: bool) -> None:
        if ok != self._state.redis_ok:
            self._state.redis_ok = ok
            self._update_ready()

    @property
    def ready(self) -> bool:
        return self._state.ready

    def _update_ready(self) -> None:
        self.ops.set_ready(self.ready)

    def run(self) -> NoReturn:
        worker = faust.Worker(self.app, loglevel="WARNING", quiet=True, redirect_stdouts=False)
        worker.execute_from_commandline()
        raise SystemExit(0)  # pragma: no cover - execute_from_commandline exits


_Taken = tuple[list[EventT[bytes]], list[ParsedMessage]]


def _exit_code(exc: BaseException) -> int:
    if isinstance(exc, WatermarkLost):
        return EXIT_WATERMARK_LOST
    if isinstance(exc, asyncio.CancelledError):
        return EXIT_INTERRUPTED
    return EXIT_TAKE_FAILED


def _message(event: EventT[bytes]) -> Any:
    return event.message


def _by_partition(offsets: Any) -> dict[int, Any]:
    return {tp.partition: offset for tp, offset in offsets.items()}


async def _quietly(aw: Any) -> None:
    try:
        await aw
    except (KafkaError, OSError, TimeoutError) as exc:
        log.debug("worker.ensure_topics_failed", error=repr(exc))
