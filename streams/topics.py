"""Topic administration and inspection over the Kafka protocol (aiokafka's low-level client).

Measured against Tansu 0.6.0 (details in ``docs/kafka-notes.md``):

- A topic first touched by a producer/consumer metadata request is auto-created with 4 partitions,
  and partitions cannot be added later, so ``ensure_topics`` runs before anything else touches a
  topic. CreateTopics for an existing topic answers error 36 (TOPIC_ALREADY_EXISTS), not an
  exception; a Metadata v12 request with ``allow_auto_topic_creation=false`` for an unknown topic
  answers error 3 (UNKNOWN_TOPIC_OR_PARTITION) and creates nothing.
- Metadata v10+ carries a ``topic_id`` UUID. aiokafka 0.14 only speaks Metadata v0-v5, so this
  module declares v12 itself. Tansu returns a UUIDv7 per topic, stable while the broker runs and
  new after a restart with memory storage (and after delete + re-create on Apache Kafka >= 2.8).
  ``topic_identity`` is that UUID: a consumer that stored per-partition offsets under one identity
  must not trust them under another (the log restarted at offset 0).
- ListOffsets "latest" is wrong on Tansu: it answers the base offset of the partition's last record
  batch + 1 (a partition holding one batch of 10 records answers 1, not 10). The high watermark in
  a Fetch response is right, so ``high_watermarks`` fetches at that (too small or exact) offset,
  which costs at most the last batch per partition. Tansu answers a Fetch with ``max_wait_ms=0``
  with no partitions at all, and answers a fetch beyond the end with the high watermark after
  ``max_wait_ms`` (Apache Kafka answers OFFSET_OUT_OF_RANGE), hence a small non-zero wait here.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from io import BytesIO
from types import TracebackType
from typing import Any, Self, TypeVar

import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaConnectionError, KafkaError, for_code
from aiokafka.protocol.abstract import AbstractType
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.protocol.offset import OffsetRequest
from aiokafka.protocol.types import Boolean, CompactArray, CompactString, Int16, Int32, Schema, TaggedFields

log = structlog.get_logger(__name__)

T = TypeVar("T")

_TOPIC_ALREADY_EXISTS = 36
_LATEST = -1
_FETCH_WAIT_MS = 5
_FETCH_MAX_BYTES = 1 << 20
_NULL_UUID = b"\0" * 16


class _Uuid(AbstractType):  # type: ignore[misc]  # aiokafka is untyped
    @classmethod
    def encode(cls, value: bytes) -> bytes:
        return value

    @classmethod
    def decode(cls, data: BytesIO) -> bytes:
        return data.read(16)


class _MetadataResponseV12(Response):  # type: ignore[misc]
    API_KEY = 3
    API_VERSION = 12
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "brokers",
            CompactArray(
                ("node_id", Int32),
                ("host", CompactString("utf-8")),
                ("port", Int32),
                ("rack", CompactString("utf-8")),
                ("tags", TaggedFields),
            ),
        ),
        ("cluster_id", CompactString("utf-8")),
        ("controller_id", Int32),
        (
            "topics",
            CompactArray(
                ("error_code", Int16),
                ("name", CompactString("utf-8")),
                ("topic_id", _Uuid),
                ("is_internal", Boolean),
                (
                    "partitions",
                    CompactArray(
                        ("error_code", Int16),
                        ("partition_index", Int32),
                        ("leader_id", Int32),
                        ("leader_epoch", Int32),
                        ("replica_nodes", CompactArray(Int32)),
                        ("isr_nodes", CompactArray(Int32)),
                        ("offline_replicas", CompactArray(Int32)),
                        ("tags", TaggedFields),
                    ),
                ),
                ("topic_authorized_operations", Int32),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class _MetadataRequestV12(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 3
    API_VERSION = 12
    RESPONSE_TYPE = _MetadataResponseV12
    SCHEMA = Schema(
        (
            "topics",
            CompactArray(("topic_id", _Uuid), ("name", CompactString("utf-8")), ("tags", TaggedFields)),
        ),
        ("allow_auto_topic_creation", Boolean),
        ("include_topic_authorized_operations", Boolean),
        ("tags", TaggedFields),
    )


class _TopicMetadataRequest(Request[_MetadataRequestV12]):  # type: ignore[misc]
    """Metadata v12 for named topics, never auto-creating them."""

    API_KEY = 3

    def __init__(self, topics: list[str]) -> None:
        self._topics = topics

    def build(self, request_struct_class: type[_MetadataRequestV12]) -> _MetadataRequestV12:
        return request_struct_class([(_NULL_UUID, t, {}) for t in self._topics], False, False, {})


@dataclass(frozen=True, slots=True)
class TopicInfo:
    name: str
    topic_id: str  # UUID; "" if the broker does not assign topic ids
    leaders: Mapping[int, int]  # partition -> leader node id


async def retry_broker(what: str, op: Callable[[], Awaitable[T]], give_up_after: float) -> T:
    """Run ``op`` until it succeeds, backing off 0.1 s -> 2 s while the broker is down or restarting
    (connection errors and retriable Kafka errors); ``TimeoutError`` after ``give_up_after`` s."""
    deadline = time.monotonic() + give_up_after
    delay = 0.1
    attempt = 0
    while True:
        attempt += 1
        try:
            return await op()
        except (KafkaConnectionError, ConnectionError, OSError, TimeoutError) as exc:
            retriable: BaseException = exc
        except KafkaError as exc:
            if not getattr(exc, "retriable", False):
                raise
            retriable = exc
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(
                f"{what}: no usable broker after {give_up_after:.0f} s: {retriable!r}"
            ) from retriable
        log.debug("kafka.retry", what=what, attempt=attempt, error=repr(retriable), delay=delay)
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 2, 2.0)


async def ensure_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    *,
    timeout: float = 60,  # noqa: ASYNC109 - bounds a retry loop with backoff, not one await
) -> None:
    """Create every missing topic with its partition count (replication factor 1).

    Waits (with backoff, up to ``timeout``) for a broker that is down or restarting. An existing
    topic is kept as it is; if its partition count differs (e.g. Tansu auto-created it with 4) a
    warning is logged, since partitions cannot be changed here.
    """

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
        try:
            await admin.start()
            response = await admin.create_topics([NewTopic(name, n, 1) for name, n in topics.items()])
            for name, code, message in response.topic_errors:
                if code == _TOPIC_ALREADY_EXISTS:
                    continue
                if code != 0:
                    raise for_code(code)(f"create topic {name}: {message}")
                log.info("kafka.topic_created", topic=name, partitions=topics[name])
        finally:
            await admin.close()

    await retry_broker("ensure_topics", create, timeout)
    async with KafkaInspector(bootstrap, timeout=timeout) as inspector:
        infos = await inspector.topics(list(topics))
    for name, wanted in topics.items():
        have = len(infos[name].leaders)
        if have != wanted:
            log.warning("kafka.topic_partitions_differ", topic=name, wanted=wanted, have=have)


class KafkaInspector:
    """One connection for repeated read-only questions (the metrics collector asks every scrape).

    ``async with KafkaInspector(bootstrap) as k: await k.high_watermarks("crm-events")``.
    """

    def __init__(self, bootstrap: str, *, timeout: float = 10.0) -> None:
        self._bootstrap = bootstrap
        self._timeout = timeout
        self._client: Any = None

    async def start(self) -> None:
        async def connect() -> Any:
            client = AIOKafkaClient(bootstrap_servers=self._bootstrap, request_timeout_ms=10_000)
            try:
                await client.bootstrap()
            except BaseException:
                await client.close()
                raise
            return client

        self._client = await retry_broker("connect", connect, self._timeout)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

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

    def _node(self) -> int:
        if self._client is None:
            raise RuntimeError("KafkaInspector not started")
        node: int = self._client.get_random_node()
        return node

    async def topics(self, names: list[str]) -> dict[str, TopicInfo]:
        """Metadata of existing topics; raises UnknownTopicOrPartitionError for a missing one."""
        response = await self._client.send(self._node(), _TopicMetadataRequest(names))
        found: dict[str, TopicInfo] = {}
        for t in response.to_object()["topics"]:
            if t["error_code"] != 0:
                raise for_code(t["error_code"])(f"topic {t['name']}")
            raw_id = t["topic_id"]
            found[t["name"]] = TopicInfo(
                name=t["name"],
                topic_id="" if raw_id == _NULL_UUID else str(uuid.UUID(bytes=raw_id)),
                leaders={p["partition_index"]: p["leader_id"] for p in t["partitions"]},
            )
        return found

    async def topic(self, name: str) -> TopicInfo:
        return (await self.topics([name]))[name]

    async def partition_count(self, topic: str) -> int:
        return len((await self.topic(topic)).leaders)

    async def topic_identity(self, topic: str) -> str:
        info = await self.topic(topic)
        if not info.topic_id:
            raise RuntimeError(f"the broker assigns no topic id to {topic!r} (needs Metadata v10+)")
        return info.topic_id

    async def high_watermarks(self, topic: str) -> dict[int, int]:
        """Partition -> high watermark (next offset to be written), from Fetch responses."""
        info = await self.topic(topic)
        by_leader: dict[int, list[int]] = {}
        for partition, leader in info.leaders.items():
            by_leader.setdefault(leader, []).append(partition)
        result: dict[int, int] = {}
        for leader, partitions in by_leader.items():
            listed = await self._client.send(
                leader, OffsetRequest(-1, 0, [(topic, [(p, _LATEST) for p in partitions])])
            )
            start_at: dict[int, int] = {}
            for t in listed.to_object()["topics"]:
                for part in t["partitions"]:
                    if part["error_code"] != 0:
                        raise for_code(part["error_code"])(f"list offsets {topic}/{part['partition']}")
                    start_at[part["partition"]] = max(0, part["offset"])
            fetched = await self._client.send(
                leader,
                FetchRequest(
                    _FETCH_WAIT_MS,
                    1,
                    _FETCH_MAX_BYTES,
                    0,
                    [(topic, [(p, start_at.get(p, 0), _FETCH_MAX_BYTES) for p in partitions])],
                ),
            )
            for t in fetched.to_object()["topics"]:
                for part in t["partitions"]:
                    if part["error_code"] != 0:
                        raise for_code(part["error_code"])(f"fetch {topic}/{part['partition']}")
                    result[part["partition"]] = part["highwater_offset"]
        missing = sorted(set(info.leaders) - set(result))
        if missing:
            raise KafkaError(f"no high watermark for {topic} partitions {missing}")
        return dict(sorted(result.items()))


async def partition_count(bootstrap: str, topic: str) -> int:
    async with KafkaInspector(bootstrap) as inspector:
        return await inspector.partition_count(topic)


async def topic_identity(bootstrap: str, topic: str) -> str:
    """The topic's UUID: changes when the topic is re-created or a memory-storage broker restarted."""
    async with KafkaInspector(bootstrap) as inspector:
        return await inspector.topic_identity(topic)


async def high_watermarks(bootstrap: str, topic: str) -> dict[int, int]:
    async with KafkaInspector(bootstrap) as inspector:
        return await inspector.high_watermarks(topic)
