"""Streaming throughput and freshness (DESIGN section 6), measured in one run on one embedded broker.

Every figure comes from the same broker, Redis and machine within a few minutes, so the targets
are ratios against baselines of the same run:

1. 1 event per message: a topic of ``messages`` realistic simulator events; a bare aiokafka
   consumer and a bare faust agent (``bench.kafka_baselines``, the worker's faust settings) read
   it, then one ``kpi worker`` (fresh namespace and consumer group) applies it. The agent runs
   before and after the worker; the worker is compared with their mean. Target: >= 0.8x.
2. 100 events per message: ``batch_events`` of the same kind of events; the bare agent's
   messages/s on it (for reference) and one worker's events/s, compared with the bare agent's
   message rate on the 1-event topic. Target: >= 3x.
3. Two workers against one, 100 events per message: each case on a fresh topic, produced only
   once every worker is assigned its partitions (``/healthz`` 200, the assignments covering every
   partition), so neither start-up nor rebalance is measured. Target: >= 1.7x.
4. Freshness: one worker, ``rate`` events/s of realistic events (re-stamped to the time they are
   sent) for ``seconds`` seconds, one event per message: a CRM webhook call for one record
   change carries one event, and the HTTP ingest publishes a request's events as one message
   (also the harder case for faust, whose cost is per message). Every ``probe_every`` seconds a
   probe ``lead.created`` with a source of its own is timed from its send until it is visible in
   Redis (the ``all`` hash field ``ld|s|<source>``: what ``/metrics`` and the API read); the
   worker's ``kpi_event_to_state_seconds`` histogram is reported too (coarse buckets: its
   quantiles are interpolated). Target: p99 < 1 s.

Throughput is events applied per second from the first applied event to the last: the worker's
Redis watermarks (``<ns>:offsets``, raised atomically with each apply; sum of offset + 1 = messages
applied) are polled every ``POLL_SECONDS``, which leaves group join and start-up out. The worker's
``/metrics`` is read once at the end (a scrape reads every KPI bucket, so it is not polled while
measuring) to check that processed + duplicate + rejected events add up to what was sent.

``python -m bench.bench_streaming [--redis-url URL] [--messages 50000] ...`` prints the JSON
(about 3.5 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from bench.kafka_baselines import Rate, bare_aiokafka_rate, bare_faust_rate
from kpi_app.simulation import SimConfig, simulate_history
from streams.broker import EmbeddedBroker, free_port
from streams.producer import EventProducer, event_key
from streams.topics import ensure_topics

PARTITIONS = 8
TARGET_ONE_EVENT = 0.8  # worker events/s over bare agent msgs/s, 1 event per message
TARGET_BATCHED = 3.0  # worker events/s (100 per message) over bare agent msgs/s (1 per message)
TARGET_TWO_WORKERS = 1.7
TARGET_P99_SECONDS = 1.0
POLL_SECONDS = 0.02  # watermark polling while measuring throughput
PROBE_DIMENSION_CAP = 100_000  # sources a bench worker admits: one per probe (see start_worker)
PROBE_POLL_SECONDS = 0.005  # Redis polling for probes: the resolution of a probe's latency
READY_TIMEOUT = 120.0
APPLY_TIMEOUT = 300.0
STOP_TIMEOUT = 45.0  # the supervisor gives its faust child 30 s, then SIGKILL
EVENTS_PER_LEAD = 7.5  # the simulator's calibration (kpi_app.simulation._EVENTS_PER_LEAD)

Message = tuple[bytes | None, bytes]


# -- data ---------------------------------------------------------------------------------------


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


# -- worker processes ---------------------------------------------------------------------------


@dataclass
class WorkerProcess:
    """A `kpi worker` (supervisor; its faust child runs in a session of its own)."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    started: float  # perf_counter

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def diagnosis(self) -> dict[str, Any]:
        """faust processes the supervisor started (1 unless one stopped) and the structured
        warnings and errors of the log: a restart in the middle of a measurement spoils it."""
        starts, warnings = 0, []
        try:
            lines = self.log.read_bytes().splitlines()
        except OSError:
            lines = []
        for line in lines:
            start = line.find(b"{")
            if start < 0:
                continue
            try:
                entry = orjson.loads(line[start:])
            except orjson.JSONDecodeError:
                continue
            if not isinstance(entry, dict):
                continue
            if entry.get("event") == "supervisor.worker_started":
                starts += 1
            elif entry.get("level") in ("warning", "error", "critical"):
                warnings.append(orjson.dumps(entry).decode()[:300])
        return {"faust_processes": starts, "warnings": warnings[:5]}

    def tail(self) -> str:
        try:
            return self.log.read_bytes()[-3000:].decode(errors="replace")
        except OSError:
            return ""


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) of every process, from /proc."""
    table: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            table[int(entry.name)] = (int(fields[1]), fields[19])
    return table


def _descendants(pid: int) -> dict[int, str]:
    """Live descendants of ``pid`` -> their start time (so that a reused pid is not mistaken)."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for child, (parent, _) in table.items():
        children.setdefault(parent, []).append(child)
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = table[child][1]
            todo.append(child)
    return found


def _killpg(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def start_worker(
    kafka_url: str, redis_url: str, namespace: str, topic: str, group: str, log: Path
) -> WorkerProcess:
    port = free_port()
    argv = [sys.executable, "-m", "kpi_app", "worker", "--kafka-url", kafka_url, "--redis-url", redis_url]
    argv += ["--namespace", namespace, "--topic", topic, "--group", group, "--web-port", str(port)]
    # Freshness probes each carry a source of their own (their `all` field is what is polled):
    # past the write-time dimension cap (KPI_DIMENSION_CAP, 500) they would fold into "other" and
    # never be seen, so the bench's workers admit more.
    env = {**os.environ, "KPI_DIMENSION_CAP": str(PROBE_DIMENSION_CAP)}
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    return WorkerProcess(proc, port, log, time.perf_counter())


def stop_workers(workers: Sequence[WorkerProcess]) -> None:
    """SIGTERM to each supervisor (it stops its faust child), SIGKILL after ``STOP_TIMEOUT``; then
    make sure no descendant (the faust children run in sessions of their own) is left."""
    running = [w for w in workers if w.proc.poll() is None]
    trees = {w.proc.pid: _descendants(w.proc.pid) for w in running}
    for w in running:
        _killpg(w.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for w in running:
        try:
            w.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _killpg(w.proc.pid, signal.SIGKILL)
            w.proc.wait()
    left = {pid: start for tree in trees.values() for pid, start in tree.items()}
    for _ in range(2):  # the children die with their supervisor (PR_SET_PDEATHSIG); else SIGKILL
        deadline = time.monotonic() + 5.0
        while left and time.monotonic() < deadline:
            table = _proc_table()
            left = {pid: start for pid, start in left.items() if table.get(pid, (0, ""))[1] == start}
            if left:
                time.sleep(0.1)
        for pid in left:  # still the same process (start time checked): its own session leader
            _killpg(pid, signal.SIGKILL)
    if left:
        raise RuntimeError(f"worker processes left behind: {sorted(left)}")


def _check_alive(workers: Sequence[WorkerProcess]) -> None:
    for w in workers:
        if w.proc.poll() is not None:
            raise RuntimeError(f"worker on :{w.port} exited with {w.proc.returncode}:\n{w.tail()}")


async def wait_assigned(http: httpx.AsyncClient, workers: Sequence[WorkerProcess]) -> float:
    """Until every worker answers ``/healthz`` 200 and their partitions are disjoint and cover the
    topic (the group is settled); seconds since the first was started."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        _check_alive(workers)
        owned: list[int] = []
        ready = True
        for w in workers:
            try:
                response = await http.get(f"{w.url}/healthz", timeout=2.0)
            except httpx.HTTPError:
                ready = False
                break
            if response.status_code != 200:
                ready = False
                break
            owned += response.json().get("partitions", [])
        if ready and sorted(owned) == list(range(PARTITIONS)):
            return time.perf_counter() - min(w.started for w in workers)
        if time.monotonic() > deadline:
            raise TimeoutError(f"workers not assigned within {READY_TIMEOUT:.0f} s:\n{workers[0].tail()}")
        await asyncio.sleep(0.2)


@dataclass(frozen=True)
class Applied:
    """When the first applied messages were seen in Redis, how many, and when all were."""

    first_at: float
    first_messages: int
    last_at: float
    messages: int


async def applied_messages(client: aioredis.Redis, namespace: str) -> int:
    """Messages whose events are in the state: the partitions' watermarks + 1 (fresh topic)."""
    raw = await client.hgetall(f"{namespace}:offsets")
    return sum(int(v) + 1 for v in raw.values())


async def watch_applied(
    client: aioredis.Redis,
    namespace: str,
    total: int,
    workers: Sequence[WorkerProcess],
    on_first: Callable[[], None] = lambda: None,
) -> Applied:
    deadline = time.monotonic() + APPLY_TIMEOUT
    first_at, first = 0.0, 0
    last_check = time.monotonic()
    while True:
        n = await applied_messages(client, namespace)
        now = time.perf_counter()
        if n and not first:
            first_at, first = now, n
            on_first()
        if n >= total:
            return Applied(first_at, first, now, n)
        if time.monotonic() - last_check > 1.0:
            last_check = time.monotonic()
            _check_alive(workers)
            if last_check > deadline:
                raise TimeoutError(f"{n} of {total} messages applied after {APPLY_TIMEOUT:.0f} s")
        await asyncio.sleep(POLL_SECONDS)


# -- the workers' /metrics ----------------------------------------------------------------------


@dataclass
class WorkerCounts:
    processed: float = 0.0
    duplicate: float = 0.0
    redelivered: float = 0.0
    rejected: float = 0.0
    buckets: dict[float, float] | None = None  # le -> cumulative count of kpi_event_to_state_seconds

    @property
    def accounted(self) -> float:
        return self.processed + self.duplicate + self.rejected

    def add(self, other: WorkerCounts) -> WorkerCounts:
        return WorkerCounts(
            self.processed + other.processed,
            self.duplicate + other.duplicate,
            self.redelivered + other.redelivered,
            self.rejected + other.rejected,
        )

    def as_dict(self) -> dict[str, int]:
        return {
            "processed": round(self.processed),
            "duplicate": round(self.duplicate),
            "redelivered": round(self.redelivered),
            "rejected": round(self.rejected),
        }


async def scrape(http: httpx.AsyncClient, worker: WorkerProcess) -> WorkerCounts:
    response = await http.get(f"{worker.url}/metrics", timeout=30.0)
    response.raise_for_status()
    counts = WorkerCounts(buckets={})
    assert counts.buckets is not None
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            name = sample.name
            if name == "kpi_events_processed_total":
                counts.processed += sample.value
            elif name == "kpi_events_duplicate_total":
                counts.duplicate += sample.value
            elif name == "kpi_events_redelivered_total":
                counts.redelivered += sample.value
            elif name == "kpi_events_rejected_total":
                counts.rejected += sample.value
            elif name == "kpi_event_to_state_seconds_bucket":
                counts.buckets[float(sample.labels["le"])] = sample.value
    return counts


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' ``histogram_quantile``: linear within the bucket holding the rank; the highest
    finite bound if the rank falls in +Inf. None without observations."""
    bounds = sorted(buckets)
    total = buckets.get(math.inf, 0.0)
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return lower
            inside = count - below
            return lower + (le - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = le, count
    return lower


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# -- machine ------------------------------------------------------------------------------------


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def _process_jiffies(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


@dataclass(frozen=True)
class CpuSample:
    busy: int  # jiffies, all cores
    total: int
    runner: float  # this process and its reaped descendants
    broker: int
    workers: int  # the live processes given to ``sample``
    redis: int


class CpuMeter:
    """The machine's CPU use over a window, split into this process (producer, pollers), the
    broker, the workers, the Redis server (shared with whatever else uses it) and the rest: other
    work on the machine. Shares of all cores (1.0: every core busy)."""

    def __init__(self, broker_pid: int | None, redis_pid: int | None) -> None:
        self._broker_pid = broker_pid
        self._redis_pid = redis_pid
        self._hz = os.sysconf("SC_CLK_TCK")

    def sample(self, pids: Sequence[int] = ()) -> CpuSample:
        """``pids``: the workers' processes (running, so not yet in ``os.times()``' children)."""
        busy, total = _cpu_times()
        t = os.times()
        return CpuSample(
            busy,
            total,
            (t.user + t.system + t.children_user + t.children_system) * self._hz,
            _process_jiffies(self._broker_pid) if self._broker_pid else 0,
            sum(_process_jiffies(pid) for pid in pids),
            _process_jiffies(self._redis_pid) if self._redis_pid else 0,
        )

    def since(self, start: CpuSample, pids: Sequence[int] = ()) -> dict[str, float]:
        end = self.sample(pids)
        total = max(end.total - start.total, 1)
        parts = {
            "runner": (end.runner - start.runner) / total,
            "broker": (end.broker - start.broker) / total,
            "workers": (end.workers - start.workers) / total,
            "redis": (end.redis - start.redis) / total,
        }
        busy = (end.busy - start.busy) / total
        shares = {"machine_busy": round(busy, 3)} | {k: round(v, 3) for k, v in parts.items()}
        return shares | {"other": round(max(0.0, busy - sum(parts.values())), 3)}


async def redis_server_pid(client: aioredis.Redis) -> int | None:
    """The Redis server's pid if it runs on this machine (its CPU is then measured apart)."""
    try:
        pid = int((await client.info("server"))["process_id"])
    except (KeyError, ValueError, aioredis.RedisError):
        return None
    return pid if "redis" in _command_name(pid) else None


def _command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text()
    except OSError:
        return ""


def worker_pids(workers: Sequence[WorkerProcess]) -> list[int]:
    return [pid for w in workers for pid in (w.proc.pid, *_descendants(w.proc.pid))]


def cpu_busy_share(seconds: float = 1.0) -> float | None:
    """Share of all cores busy over ``seconds`` (before we start anything: other work's load)."""
    try:
        busy0, total0 = _cpu_times()
        time.sleep(seconds)
        busy1, total1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return None
    return round((busy1 - busy0) / max(total1 - total0, 1), 3)


def machine(load_before: tuple[float, float, float], busy_before: float | None) -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "cpu_busy_share_before": busy_before,
    }


# -- the benchmark ------------------------------------------------------------------------------


class StreamingBench:
    def __init__(self, broker: EmbeddedBroker, redis_url: str, tmp: Path, meter: CpuMeter) -> None:
        self.broker = broker
        self.meter = meter
        self.redis_url = redis_url
        self.tmp = tmp
        self.run_id = uuid.uuid4().hex[:8]
        self.redis: aioredis.Redis = aioredis.from_url(redis_url)
        self.http = httpx.AsyncClient()
        self.workers: list[WorkerProcess] = []
        self.namespaces: list[str] = []

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
            await self.redis.aclose()

    async def clear(self, namespace: str) -> None:
        batch: list[bytes] = []
        async for key in self.redis.scan_iter(match=f"{namespace}:*", count=2000):
            batch.append(key)
            if len(batch) >= 2000:
                await self.redis.unlink(*batch)
                batch = []
        if batch:
            await self.redis.unlink(*batch)

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
                applied = await watch_applied(self.redis, namespace, len(messages), workers, first_applied)
                cpu = self.meter.since(cpu_from[0], pids)
                produce_seconds = await producing
                startup = ready
            else:
                applied = await watch_applied(self.redis, namespace, len(messages), workers, first_applied)
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
            await watch_applied(self.redis, namespace, total_messages, workers)
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
                "p50_ms": _ms(_quantile(latencies, 0.5)),
                "p90_ms": _ms(_quantile(latencies, 0.9)),
                "p99_ms": _ms(_quantile(latencies, 0.99)),
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
            key = f"{namespace}:all"
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
                        outstanding[f"ld|s|{source}"] = time.perf_counter()
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


def _ok(passed: bool) -> str:
    return "OK" if passed else "MISSED"


def _caveats(*results: dict[str, Any]) -> str:
    """What makes a measurement suspect, for its verdict line."""
    notes: list[str] = []
    for result in results:
        if not result.get("all_accounted", True):
            notes.append(f"counts {result.get('counts')} != {result.get('events')} events")
        logs = result.get("worker_logs") or [result.get("worker_log") or {}]
        if any(log.get("faust_processes", 1) > 1 for log in logs):
            notes.append("a worker's faust process was restarted")
        other = result.get("cpu", {}).get("other")
        if other is not None and other >= 0.25:
            notes.append(f"other processes used {other:.0%} of the CPU")
    return f" [{'; '.join(notes)}]" if notes else ""


def cost_model(result: dict[str, Any], cores: int) -> dict[str, Any] | None:
    """CPU per applied event (microseconds) of a throughput run, by process, and the ceilings it
    implies on this machine: Redis runs every script on one core, and the workers, Redis, the
    broker and the producer share ``cores``.

    ``one_worker_ceiling``: one worker whose CPU fully overlaps Redis's, 1 / max(worker, redis);
    ``two_worker_ceiling``: min(1 / redis, cores / (2 workers' + redis + rest per event)), where
    a second worker adds no per-event cost, only a second core's worth of worker time.
    """
    cpu, rate = result.get("cpu"), result.get("events_per_s")
    if not cpu or not rate:
        return None

    def per_event(share: float) -> float:
        return share * cores / rate * 1e6

    worker, redis = per_event(cpu["workers"]), per_event(cpu["redis"])
    rest = per_event(cpu["broker"] + cpu["runner"] + cpu["other"])
    return {
        "worker_us_per_event": round(worker, 1),
        "redis_us_per_event": round(redis, 1),
        "rest_us_per_event": round(rest, 1),
        "one_worker_ceiling_events_per_s": round(1e6 / max(worker, redis)),
        "two_worker_ceiling_events_per_s": round(min(1e6 / redis, cores * 1e6 / (worker + redis + rest))),
    }


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


class Phases:
    """The four measurements, in order, each recorded (or its error) in ``report``."""

    def __init__(self, bench: StreamingBench, report: dict[str, Any]) -> None:
        self.bench = bench
        self.report = report
        self.verdicts: list[str] = []
        self.bare_rate: float | None = None  # bare faust msgs/s on the 1-event topic

    async def guarded(self, name: str, phase: Callable[[], Awaitable[None]]) -> None:
        try:
            await phase()
        except Exception as exc:  # one failed phase must not lose the others' figures
            self.report[name] = {"error": repr(exc)[:2000]}
            self.verdicts.append(f"{name}: ERROR {repr(exc)[:300]}")

    async def one_event(self, single: Sequence[Message], faust_repeats: int) -> None:
        broker = self.bench.broker
        topic = f"bench-stream-{self.bench.run_id}-one"
        await create_topic(broker.bootstrap, topic)
        fill = await produce(broker.bootstrap, topic, single)
        plain = await bare_aiokafka_rate(broker.bootstrap, topic, len(single))
        bare: list[Rate] = [await asyncio.to_thread(bare_faust_rate, broker.bootstrap, topic, len(single))]
        worker = await self.bench.worker_throughput("w1-one", 1, single, 1, prefilled_topic=topic)
        for _ in range(faust_repeats - 1):  # again after the worker: the agent's rate drifts
            bare.append(await asyncio.to_thread(bare_faust_rate, broker.bootstrap, topic, len(single)))
        self.bare_rate = sum(r.msgs_per_s for r in bare) / len(bare)
        ratio = (worker["events_per_s"] or 0) / self.bare_rate
        self.report["one_event_per_message"] = {
            "fill_msgs_per_s": round(len(single) / fill),
            "bare_aiokafka_msgs_per_s": round(plain.msgs_per_s),
            "bare_faust_msgs_per_s": round(self.bare_rate),
            "bare_faust_runs_msgs_per_s": [round(r.msgs_per_s) for r in bare],
            "bare_faust_startup_seconds": [round(r.startup_seconds, 1) for r in bare],
            "worker": worker,
            "ratio_vs_bare_faust": round(ratio, 3),
            "target_ratio": TARGET_ONE_EVENT,
        }
        self.verdicts.append(
            f"worker 1 event/msg: {_rate(worker['events_per_s'])} ev/s = {ratio:.2f}x bare faust "
            f"{self.bare_rate:,.0f} msgs/s (runs {', '.join(f'{r.msgs_per_s:,.0f}' for r in bare)}; "
            f"bare aiokafka {plain.msgs_per_s:,.0f} msgs/s) (target >= {TARGET_ONE_EVENT}x): "
            f"{_ok(ratio >= TARGET_ONE_EVENT)}{_caveats(worker)}"
        )

    async def batched(self, batched: Sequence[Message], per_message: int) -> None:
        broker = self.bench.broker
        topic = f"bench-stream-{self.bench.run_id}-batch"
        await create_topic(broker.bootstrap, topic)
        fill = await produce(broker.bootstrap, topic, batched)
        plain = await bare_aiokafka_rate(broker.bootstrap, topic, len(batched))
        bare = await asyncio.to_thread(bare_faust_rate, broker.bootstrap, topic, len(batched))
        worker = await self.bench.worker_throughput(
            "w1-batch", 1, batched, per_message, prefilled_topic=topic
        )
        ratio = None if self.bare_rate is None else (worker["events_per_s"] or 0) / self.bare_rate
        self.report["batched"] = {
            "fill_msgs_per_s": round(len(batched) / fill),
            "bare_aiokafka_msgs_per_s": round(plain.msgs_per_s),
            "bare_aiokafka_events_per_s": round(plain.events_per_s),
            "bare_faust_msgs_per_s": round(bare.msgs_per_s),
            "worker": worker,
            "ratio_vs_bare_faust_one_event_msgs_per_s": None if ratio is None else round(ratio, 3),
            "target_ratio": TARGET_BATCHED,
        }
        verdict = "n/a (no 1-event baseline)" if ratio is None else _ok(ratio >= TARGET_BATCHED)
        self.verdicts.append(
            f"worker {per_message} events/msg: {_rate(worker['events_per_s'])} ev/s = "
            f"{'n/a' if ratio is None else f'{ratio:.2f}'}x bare faust {_rate(self.bare_rate)} msgs/s on "
            f"1-event msgs (bare faust on {per_message}-event msgs: {bare.msgs_per_s:,.0f} msgs/s) "
            f"(target >= {TARGET_BATCHED}x): {verdict}{_caveats(worker)}"
        )

    async def two_workers(self, batched: Sequence[Message], per_message: int) -> None:
        one = await self.bench.worker_throughput("w1-live", 1, batched, per_message)
        two = await self.bench.worker_throughput("w2-live", 2, batched, per_message)
        ratio = (two["events_per_s"] or 0) / max(one["events_per_s"] or 1, 1)
        cost = cost_model(one, os.cpu_count() or 1)
        self.report["two_workers"] = {
            "one_worker": one,
            "two_workers": two,
            "ratio": round(ratio, 3),
            "target_ratio": TARGET_TWO_WORKERS,
            "cost_model_one_worker": cost,
        }
        self.verdicts.append(
            f"two workers {per_message} events/msg: {_rate(two['events_per_s'])} ev/s = {ratio:.2f}x "
            f"one worker {_rate(one['events_per_s'])} ev/s (both on a fresh topic produced after the "
            f"group settled) (target >= {TARGET_TWO_WORKERS}x): {_ok(ratio >= TARGET_TWO_WORKERS)}"
            f"{_caveats(one, two)}"
        )
        if cost is not None:
            ceiling = cost["two_worker_ceiling_events_per_s"] / max(one["events_per_s"] or 1, 1)
            w, r, rest = cost["worker_us_per_event"], cost["redis_us_per_event"], cost["rest_us_per_event"]
            self.verdicts.append(
                f"cost per event (one worker, {per_message} events/msg): worker {w} us, Redis {r} us, "
                f"broker and the rest {rest} us of CPU; ceilings on {os.cpu_count()} cores: one worker "
                f"{cost['one_worker_ceiling_events_per_s']:,} ev/s, two workers "
                f"{cost['two_worker_ceiling_events_per_s']:,} ev/s = {ceiling:.2f}x one worker"
            )

    async def freshness(
        self, pool: Sequence[dict[str, Any]], rate: float, seconds: float, probe_every: float
    ) -> None:
        fresh = await self.bench.freshness(pool, rate, seconds, probe_every)
        self.report["freshness"] = fresh
        hist, probes = fresh["histogram"], fresh["probes"]
        p99 = probes.get("p99_ms")
        passed = p99 is not None and p99 < TARGET_P99_SECONDS * 1000 and probes["seen"] == probes["sent"]
        share = "n/a" if hist["share_within_1s"] is None else f"{hist['share_within_1s']:.2%}"
        self.verdicts.append(
            f"freshness at {fresh['achieved_events_per_s']:,} events/s (1 event/msg): probes "
            f"p50 {probes.get('p50_ms')} ms, p99 {p99} ms, max {probes.get('max_ms')} ms "
            f"({probes['seen']}/{probes['sent']} seen); worker histogram p50 "
            f"~{hist['p50_ms']} ms, p99 ~{hist['p99_ms']} ms, {share} within 1 s "
            f"(target p99 < {TARGET_P99_SECONDS:g} s): {_ok(passed)}{_caveats(fresh)}"
        )


async def _run(
    redis_url: str,
    *,
    messages: int,
    batch_events: int,
    per_message: int,
    rate: float,
    seconds: float,
    probe_every: float,
    faust_repeats: int,
) -> dict[str, Any]:
    report: dict[str, Any] = {}
    started = time.perf_counter()
    events = realistic_events(max(messages, batch_events))
    batch_events -= batch_events % per_message
    single = as_messages(events[-messages:], 1)
    batched = as_messages(events[-batch_events:], per_message)
    pool = events[-min(len(events), math.ceil(rate * seconds * 1.1)) :]  # re-stamped when sent
    report["data"] = {
        "generator": "kpi_app.simulation.simulate_history, 120 days ending a minute ago: the last events",
        "events_generated": len(events),
        "generate_seconds": round(time.perf_counter() - started, 1),
        "one_event_messages": len(single),
        "batch_messages": len(batched),
        "events_per_batch_message": per_message,
        "mean_event_bytes": round(sum(len(v) for _, v in single) / len(single)),
    }
    with tempfile.TemporaryDirectory(prefix="kpi-bench-streaming-") as tmp, EmbeddedBroker() as broker:
        async with aioredis.from_url(redis_url) as client:
            redis_pid = await redis_server_pid(client)
        meter = CpuMeter(broker.pid, redis_pid)
        bench = StreamingBench(broker, redis_url, Path(tmp), meter)
        phases = Phases(bench, report)
        try:
            await phases.guarded("one_event_per_message", lambda: phases.one_event(single, faust_repeats))
            await phases.guarded("batched", lambda: phases.batched(batched, per_message))
            await phases.guarded("two_workers", lambda: phases.two_workers(batched, per_message))
            await phases.guarded("freshness", lambda: phases.freshness(pool, rate, seconds, probe_every))
        finally:
            await bench.close()
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["verdicts"] = phases.verdicts
    return report


def run(
    redis_url: str = "redis://127.0.0.1:6379/0",
    *,
    messages: int = 50_000,
    batch_events: int = 200_000,
    per_message: int = 100,
    rate: float = 1000.0,
    seconds: float = 30.0,
    probe_every: float = 0.05,
    faust_repeats: int = 2,
) -> dict[str, Any]:
    """Every streaming target of DESIGN section 6 in one run (about 3.5 minutes on 2 cores).

    The broker is started here, from the calling thread (it dies with that thread).
    """
    load_before = os.getloadavg()
    busy_before = cpu_busy_share()
    # The broker and topic helpers log with structlog's default logger, to stdout: the report
    # of `python -m bench` owns stdout.
    with contextlib.redirect_stdout(sys.stderr):
        report = asyncio.run(
            _run(
                redis_url,
                messages=messages,
                batch_events=batch_events,
                per_message=per_message,
                rate=rate,
                seconds=seconds,
                probe_every=probe_every,
                faust_repeats=max(1, faust_repeats),
            )
        )
    info = machine(load_before, busy_before)
    verdicts: list[str] = report.pop("verdicts")
    busy = "" if busy_before is None else f", CPU {busy_before:.0%} busy just before"
    verdicts.insert(
        0,
        f"streaming bench on {info['cores']} cores: load average before {load_before[0]:.2f}, "
        f"after {info['load_average_after'][0]:.2f}{busy}",
    )
    return {"machine": info, **report, "verdicts": verdicts}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_streaming", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--redis-url", default=os.environ.get("KPI_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--messages", type=int, default=50_000, help="1-event messages")
    parser.add_argument("--batch-events", type=int, default=200_000, help="events in batch messages")
    parser.add_argument("--per-message", type=int, default=100, help="events per batch message")
    parser.add_argument("--rate", type=float, default=1000.0, help="freshness: events/s")
    parser.add_argument("--seconds", type=float, default=30.0, help="freshness: duration")
    parser.add_argument("--probe-every", type=float, default=0.05, help="freshness: seconds between probes")
    parser.add_argument("--faust-repeats", type=int, default=2, help="bare faust runs on the 1-event topic")
    args = parser.parse_args(argv)
    report = run(
        args.redis_url,
        messages=args.messages,
        batch_events=args.batch_events,
        per_message=args.per_message,
        rate=args.rate,
        seconds=args.seconds,
        probe_every=args.probe_every,
        faust_repeats=args.faust_repeats,
    )
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    for line in report["verdicts"]:
        print(line, file=sys.stderr)


if __name__ == "__main__":
    main()
