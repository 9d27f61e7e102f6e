"""The streaming worker: a faust app that applies the CRM event topic to the KPI state in Redis.

One process of the consumer group (``settings.consumer_group``); ``streams.supervisor`` runs it as
a child and starts it again whenever it stops. Contracts (docs/streaming.md):

- One agent (concurrency 1) takes batches of raw messages with their partition and offset
  (``noack_take``: faust acknowledges nothing itself) and one task hands them, in order, to
  ``BatchApplier``; each event is acknowledged only after Redis committed its batch. A batch that
  cannot be applied stops the process at once (``os._exit``): neither it nor any later batch is
  applied or acknowledged.
- On every assignment the topic identity is read again and the watermark fields are tied to it;
  messages of a partition are applied only once its callback finished (faust fetches them
  earlier: such batches wait, ``_await_assignment``), and a message that is left out is never
  acknowledged. A partition whose committed Kafka offset is past its Redis watermark + 1 (Redis
  lost writes) has the lower offset committed, and the process asks for a restart, as it does
  whenever the topic identity changed or Redis is seen to have lost writes (a graceful stop:
  acknowledged batches were all applied, and the next process resumes at the lower of Redis and
  Kafka).
- ``/healthz`` answers 200 once partitions are assigned and Redis answers (503 before, and while
  a batch is being retried); ``/metrics`` serves the ``kpi_*`` metrics of this process and the
  ``sales_*`` KPI gauges, rendered on a loop of their own (``streams.scrape_thread``) so that a
  scrape never stalls consuming.
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
from dataclasses import dataclass, field
from typing import Any, NoReturn, cast

import faust
import redis.asyncio as aioredis
import structlog
from aiokafka.errors import KafkaError, UnknownTopicOrPartitionError
from faust.transport.consumer import Consumer
from faust.types import TP, EventT, StreamT
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from redis.exceptions import RedisError

from kpi_state.events import EventParser
from kpi_state.opmetrics import OpMetrics
from kpi_state.report import KpiReader
from kpi_state.settings import Settings
from streams.batch import BatchApplier, ParsedMessage
from streams.broker import bootstrap_servers
from streams.deadletters import ProducerDeadLetters
from streams.faust_app import events_topic
from streams.offsets import PinnedRedis, WatermarkLedger, read_watermarks, rewind_target, watermark_field
from streams.scrape_thread import ScrapeThread
from streams.topics import KafkaInspector, ensure_topics

log = structlog.get_logger(__name__)

# A take() batch: up to this many messages, or what arrived within this time (freshness: at
# 1,000 events/s a batch closes every 0.1 s). Each batch is applied in script calls of at most
# settings.batch_size events.
TAKE_MAX_MESSAGES = 500
TAKE_WITHIN_SECONDS = 0.1
PIPELINE_DEPTH = 2  # batches taken but not yet applied, besides the one being applied
# Redis or the broker unusable for this long while a batch is in hand: stop without acknowledging.
BATCH_RETRY_SECONDS = 60.0
# Redis must answer within this at an assignment (a rebalance callback must stay well inside
# the 10 s session timeout).
ASSIGNMENT_REDIS_SECONDS = 6.0
WATCH_INTERVAL_SECONDS = 1.0
# How long a batch of freshly assigned partitions waits for the assignment callback (which itself
# is bounded by ~8 s of broker and ~6 s of Redis time) before the worker restarts instead.
ASSIGNMENT_WAIT_SECONDS = 30.0
ASSIGNMENT_POLL_SECONDS = 0.05
STOP_GRACE_SECONDS = 20.0

EXIT_BATCH_FAILED = 70
EXIT_WATERMARK_LOST = 75
EXIT_INTERRUPTED = 76
EXIT_STOP_TIMEOUT = 77


def hard_exit(code: int, event: str, **fields: Any) -> NoReturn:
    """Stop now: no ``finally``, no acknowledgment, no offset commit."""
    log.error(event, exit_code=code, **fields)
    sys.stderr.flush()
    os._exit(code)


@dataclass
class _State:
    identity: str | None = None
    assigned: bool = False
    redis_ok: bool = True
    stopping: bool = False
    partitions: list[int] = field(default_factory=list)


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
        self._state = _State()
        self.registry = registry
        self.ops = ops
        self.ops.set_ready(False)
        self.ledger = WatermarkLedger()
        self.app = app
        self.applier = BatchApplier(
            parser=parser,
            pinned=pinned,
            ledger=self.ledger,
            dead_letters=ProducerDeadLetters(self.app.producer, settings.dlq_topic),
            ops=self.ops,
            batch_size=settings.batch_size,
            retry_budget=BATCH_RETRY_SECONDS,
            on_health=self._set_redis_ok,
        )
        self.app.agent(events_topic(self.app, settings), name="kpi-apply", concurrency=1)(self._consume)
        self.app.on_partitions_assigned.connect(cast(Any, self._on_assigned))
        self.app.timer(WATCH_INTERVAL_SECONDS, name="kpi-watch")(self._watch)

        # faust makes a page function the view's method: it needs a plain (view, request) function.
        async def healthz(view: View, request: Request) -> Response:
            return await self._healthz(view, request)

        async def metrics(view: View, request: Request) -> Response:
            return await self._metrics(view, request)

        self.app.page("/healthz", name="healthz")(healthz)
        self.app.page("/metrics", name="metrics")(metrics)

    # -- consuming -------------------------------------------------------------------------

    async def _consume(self, stream: StreamT[bytes]) -> None:
        """Batches go through a short queue to one applier task, which acknowledges each event
        after Redis committed it. The agent hands a batch back to faust at once, so faust's
        per-message work on the next batch overlaps the Redis call of this one (``take()`` would
        hold its buffer until the batch body returns); the queue bound is the back-pressure."""
        assert isinstance(stream, faust.Stream)  # noack_take is not on the StreamT interface
        queue: asyncio.Queue[_Taken] = asyncio.Queue(maxsize=PIPELINE_DEPTH)
        applying = asyncio.ensure_future(self._apply_in_order(stream, queue))
        try:
            async for events in stream.noack_take(TAKE_MAX_MESSAGES, within=TAKE_WITHIN_SECONDS):
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
                except Exception as exc:  # a bug: do not let faust see the batch go by
                    hard_exit(EXIT_BATCH_FAILED, "worker.select_failed", error=repr(exc))
                await queue.put((to_ack, selected))
        finally:
            applying.cancel()  # queued batches stay unacknowledged: they are read again

    async def _await_assignment(self, messages: Sequence[Any]) -> None:
        """Hold a batch while its partitions are assigned but their assignment callback is still
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
                # Whatever it is (WatermarkLost, BatchFailed, a stop in the middle of the batch, a
                # bug): nothing from this batch on may be applied or acknowledged. Stop right here.
                code = {"WatermarkLost": EXIT_WATERMARK_LOST, "CancelledError": EXIT_INTERRUPTED}
                hard_exit(
                    code.get(type(exc).__name__, EXIT_BATCH_FAILED),
                    "worker.batch_abandoned",
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
        if self._state.identity is not None and identity != self._state.identity:
            self.request_restart("worker.topic_identity_changed", old=self._state.identity, new=identity)
            return
        fields = {tp.partition: watermark_field(topic, identity, tp.partition) for tp in mine}
        known = self.ledger.snapshot()
        stored = await self._stored_at_assignment(fields.values())
        lost = WatermarkLedger.lost(known, stored)
        if lost:
            self.request_restart("worker.watermarks_lost", lost=lost)
            return
        consumer = self.app.consumer
        assert isinstance(consumer, Consumer)  # faust's base consumer: seeks and raw commits
        committed = await consumer.seek_to_committed()
        rewinds = {
            tp: target
            for tp in mine
            if (target := rewind_target(stored[fields[tp.partition]], committed.get(tp))) is not None
        }
        if rewinds:
            # Commit the rewound position for the group, then restart: the next process starts
            # there. Rewinding in this process is unsafe: messages past the committed offset may
            # already be fetched (faust fetches during this callback), and applying one would raise
            # the watermark over the very range the rewind is meant to read again.
            committed_ok = await consumer._commit(rewinds)
            self.request_restart(
                "worker.rewind" if committed_ok else "worker.rewind_commit_failed",
                rewinds=_by_partition(rewinds),
                committed=_by_partition(committed),
            )
            return
        self._state.identity = identity
        self._state.partitions = [tp.partition for tp in mine]
        self.ledger.reset({fields[p]: stored[fields[p]] for p in fields})
        # Only now are messages of these partitions applied; until here ``_await_assignment`` held
        # them (the applier checks the watermarks itself, so a later restart loses nothing).
        self.applier.fields = fields
        self._state.assigned = True
        self._update_ready()
        log.info(
            "worker.assigned",
            topic=topic,
            topic_id=identity,
            partitions=self._state.partitions,
            watermarks={p: stored[f] for p, f in fields.items()},
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
            hard_exit(EXIT_BATCH_FAILED, "worker.assignment_failed", reason="Redis does not answer")

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
        lost = WatermarkLedger.lost(known, stored)
        if lost:
            self.request_restart("worker.watermarks_lost", lost=lost)
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
        s = self._state
        return s.assigned and s.redis_ok and not s.stopping

    def _update_ready(self) -> None:
        self.ops.set_ready(self.ready)

    # -- web ---------------------------------------------------------------------------------

    async def _healthz(self, view: View, request: Request) -> Response:
        s = self._state
        if self.ready:
            status = "ready"
        else:
            status = "stopping" if s.stopping else "starting" if not s.assigned else "degraded"
        body = {"status": status, "partitions": s.partitions, "topic_id": s.identity, "redis": s.redis_ok}
        return view.json(body, status=200 if self.ready else 503, headers={"Cache-Control": "no-store"})

    async def _metrics(self, view: View, request: Request) -> Response:
        from kpi_state.collector import render_metrics  # the KPI gauges are optional here

        accept = request.headers.get("Accept", "")
        try:
            body, content_type = await self._scrapes.run(
                lambda reader: render_metrics(reader, self.settings, (self.registry,), accept=accept)
            )
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("worker.metrics_without_kpis", error=repr(exc))  # Redis down: kpi_* only
            body, content_type = generate_latest(self.registry), CONTENT_TYPE_LATEST
        # In the headers: aiohttp refuses a content_type argument with a charset parameter.
        return view.bytes(body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})

    def run(self) -> NoReturn:
        worker = faust.Worker(self.app, loglevel="WARNING", quiet=True, redirect_stdouts=False)
        worker.execute_from_commandline()
        raise SystemExit(0)  # pragma: no cover - execute_from_commandline exits


_Taken = tuple[list[EventT[bytes]], list[ParsedMessage]]


def _message(event: EventT[bytes]) -> Any:
    return event.message


def _by_partition(offsets: Any) -> dict[int, Any]:
    return {tp.partition: offset for tp, offset in offsets.items()}


async def _quietly(aw: Any) -> None:
    try:
        await aw
    except (KafkaError, OSError, TimeoutError) as exc:
        log.debug("worker.ensure_topics_failed", error=repr(exc))
