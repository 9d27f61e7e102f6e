"""Every private faust-streaming / aiokafka attribute this project touches, in one place.

Checked against the pinned faust-streaming 0.15.3 and aiokafka 0.14.0 (pyproject.toml);
``tests/unit/test_faust_compat.py`` fails with a message naming the hook if an upgrade changes
what a hook relies on. Nothing else in the project may use a private faust or aiokafka name.

Hooks and why each is needed:

- ``limit_fetch_wait``: faust's ``AIOKafkaConsumerThread._create_worker_consumer(self, transport)``
  builds the ``aiokafka.AIOKafkaConsumer`` with a hard-coded ``fetch_max_wait_ms=1500`` and no
  setting to change it. Tansu holds a fetch for much of that wait even while data arrives, which
  put the event-to-state p99 at ~0.9-1.0 s at 1,000 events/s; at 100 ms it measured ~0.3 s with no
  throughput change. The hook wraps the factory and sets the consumer's ``_fetch_max_wait_ms``
  (stored by ``AIOKafkaConsumer.__init__``, read by ``AIOKafkaConsumer.start`` to build its fetcher)
  on the consumer faust has just built, before it starts.
- ``commit_offsets``: faust's public ``Consumer.commit`` commits only what the agents acknowledged,
  never a given offset. Rewinding the group to the offset Redis holds needs a raw commit:
  ``Consumer._commit(self, offsets: Mapping[TP, int]) -> bool`` (for the aiokafka driver, through
  its consumer thread; it commits only partitions still assigned and answers False when the
  commit did not happen).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from faust.transport.consumer import Consumer
from faust.types import TP

FETCH_MAX_WAIT_MS = 100


def limit_fetch_wait(ms: int = FETCH_MAX_WAIT_MS) -> None:
    """Make faust's worker consumer wait at most ``ms`` per fetch (see the module doc).

    Idempotent; affects this process only.
    """
    from faust.transport.drivers import aiokafka as driver

    thread_class: Any = driver.AIOKafkaConsumerThread
    if getattr(thread_class, "_kpi_fetch_wait_ms", None) == ms:
        return
    original = getattr(thread_class, "_kpi_original_create", thread_class._create_worker_consumer)

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = ms
        return consumer

    thread_class._kpi_original_create = original
    thread_class._create_worker_consumer = create_worker_consumer
    thread_class._kpi_fetch_wait_ms = ms


async def commit_offsets(consumer: Consumer, offsets: Mapping[TP, int]) -> bool:
    """Commit ``offsets`` for the group as they are (see the module doc); True if committed."""
    committed: bool = await consumer._commit(offsets)
    return committed
