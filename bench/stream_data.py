"""The streaming bench's input: realistic simulator events, encoded as topic messages."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from kpi_app.simulation import SimConfig, simulate_history
from streams.producer import EventProducer, event_key
from streams.topics import ensure_topics

PARTITIONS = 8
EVENTS_PER_LEAD = 7.5  # the simulator's calibration (kpi_app.simulation._EVENTS_PER_LEAD)

Message = tuple[bytes | None, bytes]


def realistic_events(n: int, *, seed: int = 17, days: float = 120.0) -> list[dict[str, Any]]:
    """The last ``n`` events of a simulated history of ``days`` days ending a minute ago.

    Long enough for the funnel to be full (every event type in its steady-state share); the
    simulator's ids carry the seed and the origin, so they are unique (checked).
    """
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    leads_per_day = n / (days * EVENTS_PER_LEAD) * 1.2
    while True:
        config = SimConfig(seed=seed, leads_per_day=leads_per_day)
        events = list(simulate_history(config, start=end - timedelta(days=days), end=end))
        if len(events) >= n:
            break
        leads_per_day *= 1.2 * n / max(len(events), 1)
    events = events[-n:]
    if len({e["event_id"] for e in events}) != n:
        raise RuntimeError("the simulator gave duplicate event ids")
    return events


def as_messages(events: Sequence[dict[str, Any]], per_message: int) -> list[Message]:
    """Encoded like ``EventProducer.send_events``: an object per message, or arrays keyed by their
    first event's key."""
    if per_message == 1:
        return [(event_key(e) or None, orjson.dumps(e)) for e in events]
    return [
        (event_key(events[i]) or None, orjson.dumps(list(events[i : i + per_message])))
        for i in range(0, len(events), per_message)
    ]


async def create_topic(bootstrap: str, topic: str) -> None:
    await ensure_topics(bootstrap, {topic: PARTITIONS, f"{topic}.dlq": 1})


async def produce(bootstrap: str, topic: str, messages: Sequence[Message]) -> float:
    """Send pre-encoded messages, wait for every acknowledgment; seconds taken."""
    started = time.perf_counter()
    async with EventProducer(bootstrap, topic, linger_ms=20, client_id="kpi-bench") as producer:
        for key, value in messages:
            await producer.send_raw(key, value)
        await producer.flush()
    return time.perf_counter() - started
