"""The streaming bench's measurements: worker throughput and freshness on one broker and Redis.

Each case runs in a namespace, topic and consumer group of its own, read through the
store's own methods (offset watermarks, clear) and key layout.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis.asyncio as aioredis

from bench.cpu_meter import CpuMeter, CpuSample
from bench.stats import histogram_quantile, nearest_rank
from bench.stream_data import Message, create_topic, produce
from bench.worker_metrics import WorkerCounts, scrape
from bench.worker_processes import (
    WorkerProcess,
    check_alive,
    start_worker,
    stop_workers,
    wait_assigned,
    worker_pids,
)
from kpi_app.bootstrap import Runtime, build_runtime, redis_client
from kpi_state import keys
from kpi_state.kpis import LEADS
from kpi_state.settings import Settings
from kpi_state.store import KpiStore
from streams.broker import EmbeddedBroker
from streams.producer import EventProducer

POLL_SECONDS = 0.02  # watermark polling while measuring throughput
PROBE_POLL_SECONDS = 0.005  # Redis polling for probes: the resolution of a probe's latency
APPLY_TIMEOUT = 300.0


@dataclass(frozen=True)
class Applied:
    """When the first applied messages were seen in Redis, how many, and when all were."""

    first_at: float
    first_messages: int
    last_at: float
    messages: int


async def applied_messages(store: KpiStore) -> int:
    """Messages whose events are in the state: the partitions' watermarks + 1 (fresh topic)."""
    return sum(offset + 1 for offset in (await store.offsets()).values())


async def watch_applied(
    store: KpiStore,
    total: int,
    workers: Sequence[WorkerProcess],
    on_first: Callable[[], None] = lambda: None,
) -> Applied:
    deadline = time.monotonic() + APPLY_TIMEOUT
    first_at, first = 0.0, 0
    last_check = time.monotonic()
    while True:
        n = await applied_messages(store)
        now = time.perf_counter()
        if n and not first:
            first_at, first = now, n
            on_first()
        if n >= total:
            return Applied(first_at, first, now, n)
        if time.monotonic() - last_check > 1.0:
            last_check = time.monotonic()
            check_alive(workers)
            if last_check > deadline:
                raise TimeoutError(f"{n} of {total} messages applied after {APPLY_TIMEOUT:.0f} s")
        await asyncio.sleep(POLL_SECONDS)


class StreamingBench:
    def __init__(self, broker: EmbeddedBroker, redis_url: str, tmp: Path, meter: CpuMeter) -> None:
        self.broker = broker
        self.meter = meter
        self.redis_url = redis_url
        self.tmp = tmp
        self.run_id = uuid.uuid4().hex[:8]
        self.redis: aioredis.Redis = redis_client(Settings(redis_url=redis_url))
        self.http = httpx.AsyncClient()
        self.workers: list[WorkerProcess] = []
        self.namespaces: list[str] = []
        self._runtimes: dict[str, Runtime] = {}

    def names(self, case: str) -> tuple[str, str, str]:
        """(namespace, topic, group) of a case, fresh in every run."""
        name = f"bench-stream-{self.run_id}-{case}"
        if name in self.namespaces:
            name = f"{name}-{len(self.namespaces)}"
        self.namespaces.append(name)
        return name, name, name

    async def start_workers(self, n: int, namespace: str, topic: str, group: str) -> list[WorkerProcess]:
        started = [
            start_worker(
                self.broker.url,
                self.redis_url,
                namespace,
                topic,
                group,
                self.tmp / f"{namespace}-{len(self.workers) + i}.log",
            )
            for i in range(n)
        ]
        self.workers += started
        return started

    async def stop(self, workers: Sequence[WorkerProcess]) -> None:
        await asyncio.to_thread(stop_workers, workers)

    async def close(self) -> None:
        try:
            await self.stop(self.workers)
        finally:
            for namespace in self.namespaces:
                with contextlib.suppress(Exception):
                    await self.clear(namespace)
            await self.http.aclose()
            for runtime in self._runtimes.values():
                await runtime.aclose()
            await self.redis.aclose()

    def store(self, namespace: str) -> KpiStore:
        """The store of a case's namespace, built by the composition root like a worker's."""
        if namespace not in self._runtimes:
            settings = Settings(redis_url=self.redis_url, namespace=namespace)
            self._runtimes[namespace] = build_runtime(settings)
        return self._runtimes[namespace].store

    async def clear(self, namespace: str) -> None:
        await self.store(namespace).clear()

    async def worker_throughput(
        self, case: str, n_workers: int, messages: Sequence[Message], events_per_message: int, *,
        prefilled_topic: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Events/s of ``n_workers`` workers from their first applied event to the last.

        ``prefilled_topic``: the workers read that topic (already holding ``messages``); else a
        fresh topic is created, the workers start, and ``messages`` are produced once the group
        is settled.
        """
        namespace, topic, group = self.names(case)
        topic = prefilled_topic or topic
        if prefilled_topic is None:
            await create_topic(self.broker.bootstrap, topic)
        workers = await self.start_workers(n_workers, namespace, topic, group)
        try:
            produce_seconds = None
            cpu_from: list[CpuSample] = []
            pids: list[int] = []

            def first_applied() -> None:
                pids.extend(worker_pids(workers))
                cpu_from.append(self.meter.sample(pids))

            if prefilled_topic is None:
                ready = await wait_assigned(self.http, workers)
                producing = asyncio.ensure_future(produce(self.broker.bootstrap, topic, messages))
                applied = await watch_applied(self.store(namespace), len(messages), workers, first_applied)
                cpu = self.meter.since(cpu_from[0], pids)
                produce_seconds = await producing
                startup = ready
            else:
                applied = await watch_applied(self.store(namespace), len(messages), workers, first_applied)
                cpu = self.meter.since(cpu_from[0], pids)
                startup = applied.first_at - min(w.started for w in workers)
            per_worker = [await scrape(self.http, w) for w in workers]
        finally:
            await self.stop(workers)
        diagnosis = [w.diagnosis() for w in workers]
        await self.clear(namespace)
        total = WorkerCounts()
        for counts in per_worker:
            total = total.add(counts)
        seconds = applied.last_at - applied.first_at
        events = (applied.messages - applied.first_messages) * events_per_message
        result: dict[str, Any] = {
            "workers": n_workers,
            "topic": "prefilled" if prefilled_topic else "produced after the group settled",
            "messages": len(messages),
            "events": len(messages) * events_per_message,
            "events_per_message": events_per_message,
            "events_per_s": round(events / seconds) if seconds > 0 else None,
            "measured_events": events,
            "measured_seconds": round(seconds, 3),
            "startup_seconds": round(startup, 1),
            "counts": total.as_dict(),
            "counts_per_worker": [c.as_dict() for c in per_worker],
            "all_accounted": round(total.accounted) == len(messages) * events_per_message,
            "cpu": cpu,
            "worker_logs": diagnosis,
        }
        if produce_seconds is not None:
            result["produce_seconds"] = round(produce_seconds, 2)
        return result

    async def freshness(
        self, pool: Sequence[dict[str, Any]], rate: float, seconds: float, probe_every: float
    ) -> dict[str, Any]:
        namespace, topic, group = self.names("fresh")
        await create_topic(self.broker.bootstrap, topic)
        workers = await self.start_workers(1, namespace, topic, group)
        worker = workers[0]
        try:
            await wait_assigned(self.http, workers)
            before = await scrape(self.http, worker)
            pids = worker_pids(workers)
            cpu_from = self.meter.sample(pids)
            load = await self._live_load(namespace, topic, pool, rate, seconds, probe_every)
            cpu = self.meter.since(cpu_from, pids)
            total_messages = load["messages"]
            await watch_applied(self.store(namespace), total_messages, workers)
            after = await scrape(self.http, worker)
        finally:
            await self.stop(workers)
        diagnosis = worker.diagnosis()
        await self.clear(namespace)
        assert before.buckets is not None and after.buckets is not None
        buckets = {le: after.buckets.get(le, 0.0) - before.buckets.get(le, 0.0) for le in after.buckets}
        observed = buckets.get(math.inf, 0.0)
        latencies: list[float] = load.pop("latencies")
        hist = {
            "observations": round(observed),
            "p50_ms": _ms(histogram_quantile(0.5, buckets)),
            "p99_ms": _ms(histogram_quantile(0.99, buckets)),
            "share_within_1s": round(buckets.get(1.0, 0.0) / observed, 5) if observed else None,
            "buckets": {
                ("+Inf" if math.isinf(le) else f"{le:g}"): round(v) for le, v in sorted(buckets.items())
            },
        }
        probes: dict[str, Any] = {"seen": len(latencies), "sent": load["probes_sent"]}
        if latencies:
            probes |= {
                "p50_ms": _ms(nearest_rank(latencies, 0.5)),
                "p90_ms": _ms(nearest_rank(latencies, 0.9)),
                "p99_ms": _ms(nearest_rank(latencies, 0.99)),
                "max_ms": _ms(max(latencies)),
                "min_ms": _ms(min(latencies)),
                "poll_resolution_ms": PROBE_POLL_SECONDS * 1000,
            }
        return {
            "rate_events_per_s": rate,
            "seconds": seconds,
            "events_per_message": 1,
            **load,
            "achieved_events_per_s": round(load["events"] / load["load_seconds"]),
            "probes": probes,
            "histogram": hist,
            "counts": after.as_dict(),
            "all_accounted": round(after.accounted) == load["events"],
            "cpu": cpu,
            "worker_log": diagnosis,
        }

    async def _live_load(
        self,
        namespace: str,
        topic: str,
        pool: Sequence[dict[str, Any]],
        rate: float,
        seconds: float,
        probe_every: float,
    ) -> dict[str, Any]:
        """Realistic events (re-stamped ``occurred_at`` = now, in their order) at ``rate`` minus
        the probes' rate, one per message, and a probe every ``probe_every`` s, timed until seen."""
        outstanding: dict[str, float] = {}  # the probe's `all` field -> when it was sent
        latencies: list[float] = []
        done = asyncio.Event()

        async def poll() -> None:
            key = self.store(namespace).layout.all
            while True:
                if outstanding:
                    fields = list(outstanding)
                    values = await self.redis.hmget(key, fields)
                    now = time.perf_counter()
                    for fld, value in zip(fields, values, strict=True):
                        if value is not None:
                            latencies.append(now - outstanding.pop(fld))
                elif done.is_set():
                    return
                await asyncio.sleep(PROBE_POLL_SECONDS)

        background_rate = rate - 1.0 / probe_every
        sent = probes = 0
        poller = asyncio.ensure_future(poll())
        try:
            async with EventProducer(self.broker.bootstrap, topic, client_id="kpi-bench-live") as producer:
                started = time.perf_counter()
                next_probe = started
                while (now := time.perf_counter()) - started < seconds:
                    due = min(len(pool), int((now - started) * background_rate))
                    while sent < due:
                        await producer.send_event(dict(pool[sent], occurred_at=_now_iso()))
                        sent += 1
                    if now >= next_probe:
                        next_probe += probe_every
                        probes += 1
                        source = f"probe-{probes}"
                        probe = {
                            "event_id": f"bench-probe-{self.run_id}-{probes}",
                            "type": "lead.created",
                            "occurred_at": _now_iso(),
                            "lead_id": f"bench-probe-{self.run_id}-{probes}",
                            "source": source,
                        }
                        value = orjson.dumps(probe)
                        field = keys.dimension_field(LEADS, keys.DIMENSION_CODES["source"], source)
                        outstanding[field] = time.perf_counter()
                        await producer.send_raw(probe["lead_id"].encode(), value)
                    await asyncio.sleep(0.002)
                load_seconds = time.perf_counter() - started
                await producer.flush()
            done.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(poller), timeout=15.0)
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        return {
            "events": sent + probes,
            "messages": sent + probes,
            "background_events": sent,
            "probes_sent": probes,
            "load_seconds": round(load_seconds, 2),
            "latencies": latencies,
        }


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)
