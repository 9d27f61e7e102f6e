"""The composition root: the one place that turns Settings into live objects.

The CLI, the worker, the HTTP server and the tests all build their parts here.
Nothing connects until first use (redis-py connects lazily).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from kpi_state.events import EventParser
from kpi_state.report import KpiReader
from kpi_state.settings import Settings
from kpi_state.store import KpiStore


@dataclass
class Runtime:
    settings: Settings
    redis: aioredis.Redis
    store: KpiStore
    reader: KpiReader
    parser: EventParser

    async def aclose(self) -> None:
        await self.redis.aclose()


def build_runtime(settings: Settings) -> Runtime:
    client = aioredis.Redis.from_url(
        settings.redis_url,
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=30,
    )
    store = KpiStore(client, settings)
    return Runtime(
        settings=settings,
        redis=client,
        store=store,
        reader=KpiReader(store, settings),
        parser=EventParser(settings),
    )
