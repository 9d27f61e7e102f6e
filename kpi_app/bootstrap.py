"""The composition root: the one place that turns Settings into live objects.

Every entry point (the CLI commands, ``kpi serve``, the worker, the hooks worker, the demo, the
tests) builds its parts here, in one order: settings -> Redis client -> parser, store, reader ->
metrics registry and ``OpMetrics`` -> topic spec -> producers -> faust app and workers.

Contract: nothing connects while building (redis-py connects on first use). The parts that need
a running event loop or a broker (a producer, the faust app, a worker) are made on demand by the
methods below, each call a new one that its caller starts and closes. Constructors of the parts
stay plain, so unit tests of pure parts build them directly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from kpi_state.events import EventParser
from kpi_state.opmetrics import OpMetrics
from kpi_state.report import KpiReader
from kpi_state.settings import Settings
from kpi_state.store import KpiStore

if TYPE_CHECKING:  # the Kafka side is imported only by the entry points that use it
    import faust

    from streams.hooks_worker import HooksWorker
    from streams.offsets import PinnedRedis
    from streams.producer import EventProducer
    from streams.worker import KpiWorker


def redis_client(settings: Settings) -> aioredis.Redis:
    """The async Redis client of one process (or, for the worker's scrape thread, one thread)."""
    return aioredis.Redis.from_url(
        settings.redis_url,
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=30,
    )


def sync_redis_client(url: str, *, timeout: float = 1.0, **options: Any) -> redis.Redis:
    """A blocking client for probes outside any event loop (is a Redis up at ``url``?)."""
    return redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout, **options)


def topic_spec(settings: Settings, *, hooks: bool = False) -> dict[str, int]:
    """``{topic: partitions}`` to create before anything touches them: the event topic and its
    dead-letter topic, and with ``hooks`` the webhook topic."""
    topics = {settings.topic: settings.topic_partitions, settings.dlq_topic: settings.dlq_partitions}
    if hooks:
        topics[settings.hooks_topic] = settings.hooks_partitions
    return topics


@dataclass
class Runtime:
    """The parts of one process. ``registry`` holds this process's ``kpi_*`` metrics (``ops``);
    ``aclose`` closes the Redis client (producers and workers are closed by whoever made them)."""

    settings: Settings
    redis: aioredis.Redis
    parser: EventParser
    store: KpiStore
    reader: KpiReader
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    ops: OpMetrics = field(init=False)

    def __post_init__(self) -> None:
        self.ops = OpMetrics(self.registry)

    async def aclose(self) -> None:
        await self.redis.aclose()

    # -- Redis -------------------------------------------------------------------------------

    def store_on(self, client: aioredis.Redis) -> KpiStore:
        """A store of these settings and parser whose calls go through ``client`` (a pinned
        pipeline: ``streams.offsets.PinnedRedis``)."""
        return KpiStore(client, self.settings, parser=self.parser)

    def pinned(self) -> PinnedRedis:
        from streams.offsets import PinnedRedis

        return PinnedRedis(self.redis, self.settings, self.store_on)

    def separate_reader(self) -> KpiReader:
        """A reader on a client of its own (for a thread with its own event loop)."""
        return build_runtime(self.settings).reader

    # -- Kafka (each needs a broker; a producer also a running loop) --------------------------

    def bootstrap(self) -> str:
        from streams.broker import bootstrap_servers

        if not self.settings.kafka_url:
            raise ValueError("no Kafka URL: set KPI_KAFKA_URL or pass --kafka-url")
        return bootstrap_servers(self.settings.kafka_url)

    def topics(self, *, hooks: bool = False) -> dict[str, int]:
        return topic_spec(self.settings, hooks=hooks)

    async def ensure_topics(self, *, hooks: bool = False) -> None:
        from streams.topics import ensure_topics

        await ensure_topics(self.bootstrap(), self.topics(hooks=hooks))

    def producer(self, topic: str | None = None, **options: Any) -> EventProducer:
        """A producer (not started) to ``topic`` (default: the event topic); call in a running loop."""
        from streams.producer import EventProducer

        return EventProducer(self.bootstrap(), topic or self.settings.topic, **options)

    def faust_app(self, *, web_port: int, web_host: str, app_id: str | None = None) -> faust.App:
        from streams.faust_app import make_app

        return make_app(self.settings, app_id=app_id, web_port=web_port, web_host=web_host)

    def kpi_worker(self, *, web_port: int, web_host: str) -> KpiWorker:
        from streams.worker import KpiWorker

        return KpiWorker(
            self.settings,
            redis=self.redis,
            parser=self.parser,
            make_reader=self.separate_reader,  # the scrape thread reads on a client of its own
            app=self.faust_app(web_port=web_port, web_host=web_host),
            registry=self.registry,
            ops=self.ops,
            pinned=self.pinned(),
            topics=self.topics(),
        )

    def hooks_worker(self, *, web_port: int, web_host: str) -> HooksWorker:
        from streams.hooks_worker import HooksWorker

        app_id = f"{self.settings.consumer_group}-hooks"
        return HooksWorker(
            self.settings,
            redis=self.redis,
            app=self.faust_app(web_port=web_port, web_host=web_host, app_id=app_id),
        )


@asynccontextmanager
async def opened_runtime(settings: Settings) -> AsyncIterator[Runtime]:
    """``async with opened_runtime(settings) as runtime:`` the runtime, its client closed on exit."""
    runtime = build_runtime(settings)
    try:
        yield runtime
    finally:
        await runtime.aclose()


def build_runtime(settings: Settings) -> Runtime:
    client = redis_client(settings)
    parser = EventParser(settings)
    store = KpiStore(client, settings, parser=parser)
    return Runtime(
        settings=settings,
        redis=client,
        parser=parser,
        store=store,
        reader=KpiReader(store, settings),
    )
