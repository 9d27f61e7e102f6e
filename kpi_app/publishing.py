"""Where the HTTP ingest hands valid events: the ``Publisher`` seam, its Kafka implementation,
and a broker liveness probe."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Protocol

import anyio.to_thread

from streams.broker import kafka_answers

BrokerProbe = Callable[[], Awaitable[bool]]


class Publisher(Protocol):
    """Where valid ingested events go (the Kafka topic in production). Raises on failure."""

    async def publish(self, events: Sequence[Mapping[str, object]]) -> None: ...


class _Sender(Protocol):
    async def send_event(self, event: Mapping[str, object], *, wait: bool = False) -> None: ...
    async def send_batch(self, events: Sequence[Mapping[str, object]], *, wait: bool = False) -> None: ...


class ProducerPublisher:
    """A ``Publisher`` over ``streams.producer.EventProducer``: returns once the broker acknowledged.

    A single event goes as a JSON object (keyed by its entity), several as one JSON array.
    """

    def __init__(self, producer: _Sender) -> None:
        self._producer = producer

    async def publish(self, events: Sequence[Mapping[str, object]]) -> None:
        if len(events) == 1:
            await self._producer.send_event(events[0], wait=True)
        elif events:
            await self._producer.send_batch(events, wait=True)


def broker_probe(bootstrap: str, *, timeout: float = 1.0) -> BrokerProbe:
    """True when one of ``bootstrap`` (``host:port,...``) answers a Kafka Metadata request.

    Its own short connection per call (in a thread), independent of the producer's
    retries, which take ``request_timeout_ms`` (40 s) to give up.
    """
    addresses = []
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        addresses.append((host, int(port)))

    async def probe() -> bool:
        for host, port in addresses:
            if await anyio.to_thread.run_sync(partial(kafka_answers, host, port, timeout=timeout)):
                return True
        return False

    return probe
