"""POST /events and /healthz against a real broker (embedded Tansu) that goes away
(issue 15, defect 6): the ingest answers 503 within its publish timeout, not after the
producer's 40 s, and /healthz reports the broker down (200 "degraded": the read side works)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Mapping, Sequence

import httpx
import orjson
import pytest

from kpi_app.bootstrap import Runtime
from kpi_app.publishing import ProducerPublisher, broker_probe
from kpi_state.settings import Settings
from streams.broker import EmbeddedBroker
from streams.producer import EventProducer
from streams.topics import ensure_topics
from tests.integration.test_web import JSON, TOKEN, drive, lead

pytestmark = pytest.mark.integration


def test_broker_down_is_a_quick_503_and_a_degraded_health(make_settings: Callable[..., Settings]) -> None:
    topic = f"t-{uuid.uuid4().hex[:10]}"
    settings = make_settings(ingest_tokens=TOKEN, topic=topic, ingest_publish_timeout_seconds=3.0)
    broker = EmbeddedBroker().start()
    restarted: list[EmbeddedBroker] = []
    try:
        bootstrap = broker.bootstrap

        # drive() builds the app before the scenario runs, so the publisher must exist first:
        # the producer is started lazily through this holder.
        holder = _LazyPublisher()

        async def outer(client: httpx.AsyncClient, runtime: Runtime) -> None:
            await ensure_topics(bootstrap, {topic: 1})
            producer = EventProducer(bootstrap, topic, client_id="test-web-broker")
            await producer.start()
            holder.inner = ProducerPublisher(producer)
            try:
                await _down_scenario(client, broker)
                # Back on the same port: the broker answers the probe and ingest resumes.
                restarted.append(EmbeddedBroker(port=broker.port).start())
                await ensure_topics(bootstrap, {topic: 1})
                await _recovery_scenario(client)
            finally:
                # Closing may report the batch the timed-out POST left behind.
                with contextlib.suppress(Exception):
                    await producer.close()

        drive(settings, outer, holder, broker_probe=broker_probe(bootstrap))
    finally:
        for running in [broker, *restarted]:
            running.stop()


class _LazyPublisher:
    """A ``Publisher`` whose ``ProducerPublisher`` is set once the scenario's loop runs."""

    inner: ProducerPublisher | None = None

    async def publish(self, events: Sequence[Mapping[str, object]]) -> None:
        assert self.inner is not None
        await self.inner.publish(events)


async def _down_scenario(client: httpx.AsyncClient, broker: EmbeddedBroker) -> None:
    up = await client.post("/events", content=orjson.dumps([lead(1), lead(2)]), headers=JSON)
    assert up.status_code == 202
    health = await client.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "redis": True, "broker": True}

    broker.stop()
    started = time.perf_counter()
    down = await client.post("/events", content=orjson.dumps([lead(3)]), headers=JSON)
    first = time.perf_counter() - started
    assert down.status_code == 503
    assert down.json()["error"] == "publish_failed"
    assert down.headers["retry-after"] == "5"
    # Bounded by ingest_publish_timeout_seconds (3 s; measured 3.2 s), not the producer's 40 s.
    assert first < 10

    # Once found down, the next POST asks the broker first and answers without enqueueing.
    started = time.perf_counter()
    again = await client.post("/events", content=orjson.dumps([lead(4)]), headers=JSON)
    second = time.perf_counter() - started
    assert again.status_code == 503
    assert again.json()["error"] == "broker_unavailable"
    assert second < 5  # measured 3 ms: the probe's connection is refused

    degraded = await client.get("/healthz")
    assert degraded.status_code == 200
    assert degraded.json() == {"status": "degraded", "redis": True, "broker": False}


async def _recovery_scenario(client: httpx.AsyncClient) -> None:
    health = await client.get("/healthz")
    assert health.json() == {"status": "ok", "redis": True, "broker": True}
    deadline = time.monotonic() + 30
    while True:  # the producer reconnects on its own schedule
        response = await client.post("/events", content=orjson.dumps([lead(5)]), headers=JSON)
        if response.status_code == 202 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert response.status_code == 202
