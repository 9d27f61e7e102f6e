"""`kpi hooks-worker`: a faust app that translates stored CRM webhooks into the event topic.

One agent (concurrency 1) reads the hooks topic (``KPI_HOOKS_TOPIC``, raw envelopes written by
``POST /hooks/*``), translates each message (``streams.hooks_translator``), publishes its events
as one JSON-array message per ``KPI_MESSAGE_BATCH`` events to the event topic and its dead
letters to ``<topic>.dlq``, and waits until the broker acknowledged all of them before faust
acknowledges the message (it moves on only then). Redis and broker errors are retried in place
with backoff for up to 60 s; then the process stops hard (``os._exit``: nothing acknowledged) and
the supervisor starts it again. A redelivered message translates to the same event ids, so the
KPI worker counts it as duplicates: effectively once, like every other producer.

Why a process of its own rather than a second agent of `kpi worker`: the KPI worker's agent
owns partition assignment, watermarks and restarts for the event topic (docs/streaming.md), and
a second topic in its consumer group would take part in every one of its rebalances; the
translator needs none of that (its output is de-duplicated downstream), and it scales apart.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any, NoReturn

import faust
import orjson
import redis.asyncio as aioredis
import structlog
from aiokafka.errors import KafkaError
from faust.exceptions import ProducerSendError
from faust.types import StreamT
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from redis.exceptions import RedisError

from kpi_state.settings import Settings
from streams.deadletters import DeadLetter, ProducerDeadLetters
from streams.hooks_translator import HookTranslator, Translated

log = structlog.get_logger(__name__)

RETRY_SECONDS = 60.0
RETRIABLE = (RedisError, KafkaError, ProducerSendError, OSError, TimeoutError)
EXIT_MESSAGE_FAILED = 70


def _hard_exit(event: str, **fields: Any) -> NoReturn:
    log.error(event, exit_code=EXIT_MESSAGE_FAILED, **fields)
    sys.stderr.flush()
    os._exit(EXIT_MESSAGE_FAILED)


class HooksWorker:
    def __init__(self, settings: Settings, *, redis: aioredis.Redis, app: faust.App) -> None:
        """Parts come from the composition root (``kpi_app.bootstrap.Runtime.hooks_worker``)."""
        self.settings = settings
        self.translator = HookTranslator(settings, redis)  # a bad mapping fails here, at start
        self.app = app
        self.dead_letters = ProducerDeadLetters(self.app.producer, settings.dlq_topic)
        self.translated = 0
        # /metrics: what became of the stored payloads. An untranslatable item is bad input like
        # any other (DESIGN section 2): counted in kpi_events_rejected_total by reason.
        self.registry = CollectorRegistry()
        self.payloads = Counter(
            "kpi_hooks_payloads",
            "Stored webhook payloads translated, by vendor",
            ["vendor"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "kpi_events_rejected",
            "Webhook items dead-lettered by the translation, by reason",
            ["reason"],
            registry=self.registry,
        )
        hooks = self.app.topic(
            settings.hooks_topic,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=settings.hooks_partitions,
            internal=False,
        )
        self.app.agent(hooks, name="kpi-hooks", concurrency=1)(self._consume)

        async def healthz(view: View, request: Request) -> Response:
            return view.json({"status": "running", "translated": self.translated})

        async def metrics(view: View, request: Request) -> Response:
            headers = {"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"}
            return view.bytes(generate_latest(self.registry), headers=headers)

        self.app.page("/healthz", name="healthz")(healthz)
        self.app.page("/metrics", name="metrics")(metrics)

    async def _consume(self, stream: StreamT[bytes]) -> None:
        async for event in stream.events():
            await self._handle(event.message)

    async def _handle(self, message: Any) -> None:
        deadline = time.monotonic() + RETRY_SECONDS
        delay = 0.05
        while True:
            try:
                translated = await self.translator.translate(message.value)
                await self._publish(translated, message)
                self.translated += 1
                self.payloads.labels(translated.vendor).inc()
                for letter in translated.letters:
                    self.rejected.labels(letter.reason).inc()
                return
            except RETRIABLE as exc:
                if time.monotonic() > deadline:
                    _hard_exit("hooks.message_failed", error=repr(exc), offset=message.offset)
                log.warning("hooks.retry", error=repr(exc), delay=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            except BaseException as exc:  # a bug or a stop mid-message: never acknowledge it
                _hard_exit("hooks.message_abandoned", error=repr(exc), offset=message.offset)

    async def _publish(self, translated: Translated, message: Any) -> None:
        size = self.settings.message_batch
        pending = []
        events = translated.events
        for start in range(0, len(events), size):
            chunk = orjson.dumps(events[start : start + size])
            pending.append(await self.app.producer.send(self.settings.topic, None, chunk, None, None, None))
        letters = [
            DeadLetter(
                value=letter.value,
                key=None,
                reason=letter.reason,
                field=letter.field,
                detail=letter.detail,
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
                index=letter.index,
                timestamp=message.timestamp,
            )
            for letter in translated.letters
        ]
        await self.dead_letters.send(letters)
        for future in pending:
            await future
        if translated.letters:
            log.info("hooks.dead_letters", reasons=sorted({letter.reason for letter in translated.letters}))

    def run(self) -> NoReturn:
        worker = faust.Worker(self.app, loglevel="WARNING", quiet=True, redirect_stdouts=False)
        worker.execute_from_commandline()
        raise SystemExit(0)  # pragma: no cover - execute_from_commandline exits
