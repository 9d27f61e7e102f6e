"""Producing CRM events to the topic (DESIGN section 2, "Messages on the topic").

A message holds one event (a JSON object, keyed by ``event_key``) or a batch (a JSON array, keyed
by its first event's key, which spreads batches over partitions). faust's cost is per message, so
producers with many events at hand send batches.

aiokafka producer settings: ``acks="all"``; no idempotence (Tansu has no idempotent producer and
faust's consumers de-duplicate by ``event_id`` anyway); a short linger so that many ``send_raw``
calls share one request. ``send_raw``/``send_batch`` only enqueue unless ``wait=True``; a failed
delivery is raised by the next send, ``flush()`` or ``close()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import orjson
import structlog
from aiokafka import AIOKafkaProducer

from streams.topics import retry_broker

log = structlog.get_logger(__name__)

_KEY_FIELDS = ("deal_id", "lead_id", "customer_id", "event_id")


def event_key(event: Mapping[str, object]) -> bytes:
    """``deal_id``, else ``lead_id``, else ``customer_id``, else ``event_id``; ``b""`` if none is set.

    JSON ``null`` and empty strings count as absent (an event without any id is invalid anyway and
    ends as a dead letter wherever it lands).
    """
    for field in _KEY_FIELDS:
        value = event.get(field)
        if value is None or value == "":
            continue
        return value.encode() if isinstance(value, str) else str(value).encode()
    return b""


class EventProducer:
    """``async with EventProducer(bootstrap, topic) as p: await p.send_batch(events)``."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        linger_ms: int = 5,
        max_batch_size: int = 256 * 1024,
        max_request_size: int = 4 * 1024 * 1024,
        client_id: str = "kpi-producer",
    ) -> None:
        self.topic = topic
        self._producer: Any = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            client_id=client_id,
            acks="all",
            enable_idempotence=False,
            linger_ms=linger_ms,
            max_batch_size=max_batch_size,
            max_request_size=max_request_size,
        )
        self._pending: set[asyncio.Future[Any]] = set()
        self._error: BaseException | None = None
        self._started = False
        self.messages_sent = 0

    async def start(self, *, wait_for_broker: float = 30.0) -> None:
        """Connect, retrying with backoff for up to ``wait_for_broker`` seconds."""
        await retry_broker("producer start", self._producer.start, wait_for_broker)
        self._started = True

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _raise_failed(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _track(self, fut: asyncio.Future[Any]) -> None:
        self._pending.add(fut)

        def done(f: asyncio.Future[Any]) -> None:
            self._pending.discard(f)
            if not f.cancelled() and f.exception() is not None and self._error is None:
                self._error = f.exception()
                log.error("producer.delivery_failed", topic=self.topic, error=repr(self._error))

        fut.add_done_callback(done)

    async def send_raw(
        self, key: bytes | None, value: bytes, *, partition: int | None = None, wait: bool = False
    ) -> None:
        """Enqueue one message; with ``wait``, return only once the broker acknowledged it."""
        self._raise_failed()
        fut = await self._producer.send(self.topic, value, key=key, partition=partition)
        self.messages_sent += 1
        if wait:
            await fut
        else:
            self._track(fut)

    async def send_event(self, event: Mapping[str, object], *, wait: bool = False) -> None:
        await self.send_raw(event_key(event) or None, orjson.dumps(event), wait=wait)

    async def send_batch(self, events: Sequence[Mapping[str, object]], *, wait: bool = False) -> None:
        """All of ``events`` as one JSON-array message. An empty batch sends nothing."""
        if not events:
            return
        await self.send_raw(event_key(events[0]) or None, orjson.dumps(list(events)), wait=wait)

    async def send_events(
        self, events: Iterable[Mapping[str, object]], *, events_per_message: int = 100, wait: bool = False
    ) -> int:
        """``events`` in messages of up to ``events_per_message`` (``KPI_MESSAGE_BATCH``; 1: one JSON
        object per message).

        Returns the number of messages. With ``wait``, returns once all of them are acknowledged.
        """
        messages = 0
        chunk: list[Mapping[str, object]] = []
        for event in events:
            if events_per_message <= 1:
                await self.send_event(event)
                messages += 1
                continue
            chunk.append(event)
            if len(chunk) >= events_per_message:
                await self.send_batch(chunk)
                messages += 1
                chunk = []
        if chunk:
            await self.send_batch(chunk)
            messages += 1
        if wait:
            await self.flush()
        return messages

    async def flush(self) -> None:
        """Wait until every enqueued message is acknowledged; raise the first delivery error."""
        if self._started:
            await self._producer.flush()
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        self._raise_failed()

    async def close(self) -> None:
        """Flush, then disconnect. Idempotent."""
        if not self._started:
            return
        try:
            await self.flush()
        finally:
            self._started = False
            await self._producer.stop()
