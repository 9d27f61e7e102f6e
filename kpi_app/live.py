"""``kpi simulate --kafka-url``: the CRM simulator publishing to the event topic in real time.

- ``history_days``: first, that many *simulated* days before now are generated and published as
  fast as the broker takes them (a backfill; with ``time_scale`` 1440 a simulated day is a real
  minute, so 30 days of history span the last 30 minutes).
- Then, every ``tick`` seconds, the events that happened since the previous tick are published
  (in messages of up to ``settings.message_batch`` events), at about ``rate`` events per second
  once the funnel has filled (``scaled_for_rate``), until ``duration`` seconds have passed or
  ``stop`` is set.
- ``conversion_drop``: unless the config sets ``drop_at``, the drop starts when the live phase
  does, so the history shows the normal rates and the live part the fall (the alert demo).

One simulation engine (``LiveSimulator``) covers both phases, so live deals continue the
history's leads and deals.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import structlog

from kpi_app.bootstrap import Runtime
from kpi_app.simulation import LiveSimulator, SimConfig, scaled_for_rate

log = structlog.get_logger(__name__)

LOG_EVERY_SECONDS = 10.0


@dataclass
class LiveSummary:
    history_events: int = 0
    live_events: int = 0
    messages: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "history_events": self.history_events,
            "live_events": self.live_events,
            "messages": self.messages,
            "seconds": round(self.seconds, 3),
        }


async def publish_live(
    runtime: Runtime,
    config: SimConfig,
    *,
    rate: float,
    duration: float | None = None,
    history_days: float = 0.0,
    tick: float = 0.25,
    stop: asyncio.Event | None = None,
) -> LiveSummary:
    settings = runtime.settings
    if not settings.kafka_url:
        raise ValueError("no Kafka URL: set KPI_KAFKA_URL or pass --kafka-url")
    if history_days < 0 or tick <= 0 or (duration is not None and duration < 0):
        raise ValueError("history_days and duration must be >= 0, tick > 0")
    await runtime.ensure_topics()
    stop = stop or asyncio.Event()
    summary = LiveSummary()
    started = time.monotonic()
    now = datetime.now(UTC).replace(microsecond=0)
    config = scaled_for_rate(config, rate)
    if config.conversion_drop and config.drop_at is None:
        config = replace(config, drop_at=now)
    sim = LiveSimulator(config)
    size = settings.message_batch
    async with runtime.producer(client_id="kpi-simulate") as producer:
        t = now - timedelta(days=history_days / config.time_scale)
        while t < now and not stop.is_set():
            step = min(now, t + sim.chunk)
            events = sim.events_between(t, step)
            summary.history_events += len(events)
            await producer.send_events(events, events_per_message=size)
            t = step
        await producer.flush()
        log.info("simulate.history_sent", events=summary.history_events, days=history_days)
        deadline = None if duration is None else time.monotonic() + duration
        last, logged = now, time.monotonic()
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            wait = tick if deadline is None else max(0.0, min(tick, deadline - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=wait)
            current = datetime.now(UTC)
            events = sim.events_between(last, current)
            last = current
            summary.live_events += len(events)
            await producer.send_events(events, events_per_message=size)
            if time.monotonic() - logged >= LOG_EVERY_SECONDS:
                logged = time.monotonic()
                log.info("simulate.live", events=summary.live_events, active_customers=sim.active_customers)
        await producer.flush()
        summary.messages = producer.messages_sent
    summary.seconds = time.monotonic() - started
    return summary
