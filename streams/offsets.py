"""Per-partition offset watermarks kept in Redis beside the KPI state (docs/streaming.md).

Contracts:

- A watermark field is ``<topic>/<topic id>/<partition>`` (``watermark_field``) and holds the highest
  offset whose events are in the KPI state. ``apply.lua`` raises it in the same atomic call as the
  KPI update (``KpiStore.apply(..., marks=...)``) and skips an event at or below it. The topic id
  (``streams.topics.topic_identity``) is new whenever the log restarts at offset 0 (topic
  re-created, a memory-storage broker restarted), so an old watermark can never swallow new events.
- Redis may lose its last writes (AOF ``everysec``, a failover): a watermark can then be *below*
  what the worker already committed to Kafka. Consumption therefore resumes at the lower of the
  Redis watermark + 1 and the committed Kafka offset (``rewind_target``), and a running worker
  checks that a watermark never goes down (``WatermarkLedger``): one that did means lost writes.
- ``PinnedRedis`` runs the watermark check and the KPI applies of one batch on a single Redis
  connection, so both see the same Redis incarnation. redis-py silently reconnects and retries a
  failed command (10 times, by default) -- also onto a Redis that restarted without our last writes,
  which would hide the loss -- except on a connection that WATCHes a key: there it raises
  ``WatchError``. So the session WATCHes a private key nobody writes and never runs MULTI/EXEC: the
  WATCH is only there to turn any reconnect into an error, on which the caller retries the whole
  batch from a fresh check.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Self

import redis.asyncio as aioredis

from kpi_state.events import Event
from kpi_state.settings import Settings
from kpi_state.store import ApplyResult, KpiStore, PreparedBatch, SourcedEvent

NO_WATERMARK = -1  # what apply.lua assumes for a field that is not set


def watermark_field(topic: str, topic_id: str, partition: int) -> str:
    return f"{topic}/{topic_id}/{partition}"


def resume_offset(stored: int | None, committed: int | None) -> int:
    """Where consumption of a partition must resume: the lower of the Redis watermark + 1 (0 when
    Redis has none: nothing of this log is in the state) and the committed Kafka offset."""
    from_redis = 0 if stored is None else stored + 1
    return from_redis if committed is None else min(from_redis, committed)


def rewind_target(stored: int | None, committed: int | None) -> int | None:
    """The offset to seek back to, or None when the consumer's own start is not too late.

    faust starts a partition at its committed offset, else at the earliest one; only a committed
    offset past the Redis watermark + 1 (Redis lost writes, or a new namespace) needs a rewind.
    Resuming *later* than the committed offset is never needed: what lies between is skipped by
    the watermark without touching the state.
    """
    if committed is None:
        return None
    target = resume_offset(stored, committed)
    return target if target < committed else None


class WatermarkLedger:
    """The watermarks this process knows to be in Redis, per field.

    ``known`` rises only after an apply returned (the script raised the field at least that far),
    and Redis only ever raises a field, so reading a field below its known value means Redis lost
    writes. A reader must take ``snapshot()`` *before* it reads Redis: an apply that completes in
    between raises ``known`` past what the read could see.
    """

    def __init__(self) -> None:
        self._known: dict[str, int] = {}

    def reset(self, stored: Mapping[str, int | None]) -> None:
        """A new assignment: what Redis holds now is the baseline."""
        self._known = {f: NO_WATERMARK if v is None else v for f, v in stored.items()}

    def raise_to(self, marks: Mapping[str, int]) -> None:
        for field, offset in marks.items():
            if offset > self._known.get(field, NO_WATERMARK):
                self._known[field] = offset

    def snapshot(self) -> dict[str, int]:
        return dict(self._known)

    @staticmethod
    def lost(known: Mapping[str, int], stored: Mapping[str, int | None]) -> dict[str, tuple[int, int]]:
        """``{field: (known, stored)}`` for every field Redis holds below what was known."""
        out: dict[str, tuple[int, int]] = {}
        for field, value in stored.items():
            have = NO_WATERMARK if value is None else value
            if field in known and have < known[field]:
                out[field] = (known[field], have)
        return out


class PinnedRedis:
    """``async with pinned as session:`` one Redis connection for one batch (see the module doc).

    Reusable: each ``async with`` takes a connection from the client's pool and gives it back.
    Any connection error inside raises (``WatchError`` or ``ConnectionError``) instead of being
    retried on a new connection.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        settings: Settings,
        store_on: Callable[[aioredis.Redis], KpiStore] | None = None,
    ) -> None:
        self._pipe = client.pipeline(transaction=True)
        # A store whose script calls go through the pinned connection (immediate mode while
        # WATCHing: the script runs at once and returns its reply, never queued in a MULTI).
        # ``store_on``: the composition root's (kpi_app.bootstrap.Runtime.store_on).
        self._store = store_on(self._pipe) if store_on else KpiStore(self._pipe, settings)
        self._guard_key = self._store.layout.pin(uuid.uuid4().hex)  # never written

    async def __aenter__(self) -> Self:
        await self._pipe.watch(self._guard_key)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._pipe.aclose()  # UNWATCH and give the connection back; the pipeline stays usable

    async def watermarks(self, fields: Iterable[str]) -> dict[str, int | None]:
        return await self._store.watermarks(fields)

    def prepare(self, events: Sequence[Event | SourcedEvent], marks: Mapping[str, int]) -> PreparedBatch:
        return self._store.prepare(events, marks)

    async def execute(self, batch: PreparedBatch) -> ApplyResult:
        return await self._store.execute(batch)


async def read_watermarks(
    client: aioredis.Redis, settings: Settings, fields: Iterable[str]
) -> dict[str, int | None]:
    """The stored watermarks of ``fields``, on any connection (a check, not part of an apply)."""
    return await KpiStore(client, settings).watermarks(fields)
