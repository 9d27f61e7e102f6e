"""Helpers of the streaming tests: test data, the `kpi` CLI in subprocesses, a worker's web port,
the ``workers`` and ``namespaces`` fixtures, a `redis-server` with AOF, and reading the state and
the dead-letter topic."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from aiokafka import AIOKafkaConsumer, TopicPartition

from kpi_app.bootstrap import build_runtime, sync_redis_client
from kpi_app.simulation import SimConfig, simulate_history
from kpi_state.events import Rejection
from kpi_state.settings import Settings
from streams.broker import EmbeddedBroker, free_port
from streams.childproc import signal_group
from streams.deadletters import read_headers
from streams.topics import partition_count
from tests.conftest import new_settings, store_for

KPI = [sys.executable, "-m", "kpi_app"]  # the `kpi` command
READY_TIMEOUT = 60.0
CONVERGE_TIMEOUT = 120.0


# -- test data ---------------------------------------------------------------------------------


@dataclass
class Stream:
    """A JSONL file: simulated events, duplicates, and bad lines with the rejection each gets."""

    lines: list[bytes]
    bad: dict[bytes, Rejection] = field(default_factory=dict)

    def write(self, path: Path, lines: list[bytes] | None = None) -> Path:
        path.write_bytes(b"".join(line + b"\n" for line in (self.lines if lines is None else lines)))
        return path


def _bad_variants(event: dict[str, Any], tag: str, now: datetime) -> list[bytes]:
    naive = dict(event, event_id=f"bad-naive-{tag}", occurred_at=str(event["occurred_at"]).replace("Z", ""))
    future = dict(event, event_id=f"bad-future-{tag}", occurred_at=(now + timedelta(hours=3)).isoformat())
    unknown = dict(event, event_id=f"bad-type-{tag}", type="deal.exploded")
    missing = {k: v for k, v in event.items() if k != "event_id"} | {"note": f"missing-{tag}"}
    at = event["occurred_at"]
    stage = {"event_id": f"bad-stage-{tag}", "type": "deal.stage_changed", "occurred_at": at, "deal_id": "d"}
    stage["to_stage"] = "nowhere"
    spend = {"event_id": f"bad-amount-{tag}", "type": "spend.recorded", "occurred_at": at, "amount": -5.0}
    spend["category"] = "marketing"
    variants = [orjson.dumps(v) for v in (naive, future, unknown, missing, stage, spend)]
    return [*variants, b'{"event_id": "bad-json-' + tag.encode() + b'", "type":']


def make_stream(settings: Settings, *, days: int, leads_per_day: float, seed: int) -> Stream:
    """Simulated history ending a minute ago, ~3% duplicated lines, ~2% bad lines (all kinds)."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    end = now.replace(microsecond=0) - timedelta(minutes=1)
    config = SimConfig(seed=seed, leads_per_day=leads_per_day, stages=settings.stage_names)
    events = list(simulate_history(config, start=end - timedelta(days=days), end=end))
    lines = [orjson.dumps(e) for e in events]
    for _ in range(len(lines) * 3 // 100):
        at = rng.randrange(len(lines))
        lines.insert(rng.randrange(at, len(lines) + 1), lines[at])
    parser = build_runtime(settings).parser
    stream = Stream(lines)
    n_bad = len(lines) * 2 // 100
    for i in range(n_bad // 7 + 1):
        for line in _bad_variants(rng.choice(events), f"{seed}-{i}", now):
            outcome = parser.parse_bytes(line, now)
            assert isinstance(outcome, Rejection), line
            stream.bad[line] = outcome
            lines.insert(rng.randrange(len(lines) + 1), line)
    return stream


# -- processes ---------------------------------------------------------------------------------


def kpi(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*KPI, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"kpi {' '.join(args)}: {result.returncode}\n{result.stderr[-3000:]}"
    return result


def cli_args(settings: Settings) -> list[str]:
    return ["--redis-url", settings.redis_url, "--namespace", settings.namespace]


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def health(self) -> int | None:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code
        except httpx.HTTPError:
            return None

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        wait_until(lambda: self.health() == 200, timeout, f"worker on :{self.port} ready", self)

    def metrics(self) -> dict[str, float]:
        """``name{labels}`` -> value of the ``kpi_*`` samples."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        out = {}
        for line in text.splitlines():
            if line.startswith("kpi_"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def processed(self) -> float:
        try:
            return sum(v for k, v in self.metrics().items() if k.startswith("kpi_events_processed_total"))
        except httpx.HTTPError:
            return 0.0

    def signal(self, sig: signal.Signals) -> None:
        signal_group(self.proc.pid, sig)

    def stop(self) -> None:
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait()

    def tail(self) -> str:
        return self.log.read_bytes()[-4000:].decode(errors="replace")


def processes_mentioning(words: set[str]) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().split()[2]
        except (OSError, IndexError):
            continue
        if state != "Z" and any(f" {w} " in f" {cmdline} " for w in words):
            found.append(f"{proc.name}: {cmdline}")
    return found


def wait_until(check: Callable[[], bool], timeout: float, what: str, worker: Worker | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    detail = f"\nworker log:\n{worker.tail()}" if worker else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for: {what}{detail}")


# -- state -------------------------------------------------------------------------------------


def document(settings: Settings, as_of: datetime) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        runtime = build_runtime(settings)
        try:
            return await runtime.reader.document(as_of)
        finally:
            await runtime.aclose()

    doc: dict[str, Any] = orjson.loads(orjson.dumps(asyncio.run(read())))
    return doc


def show(settings: Settings, as_of: datetime) -> dict[str, Any]:
    stamp = as_of.isoformat().replace("+00:00", "Z")
    out = kpi("show", "--format", "json", "--as-of", stamp, *cli_args(settings)).stdout
    doc: dict[str, Any] = orjson.loads(out)
    return doc


def replay(settings: Settings, tmp_path: Path, *files: Path) -> None:
    kpi(
        "replay",
        *map(str, files),
        "--no-progress",
        "--rejects",
        str(tmp_path / "rejects.jsonl"),
        *cli_args(settings),
    )


def converge(worker_ns: Settings, expected: dict[str, Any], as_of: datetime, worker: Worker) -> None:
    wait_until(
        lambda: document(worker_ns, as_of) == expected, CONVERGE_TIMEOUT, "state equal to replay", worker
    )
    assert show(worker_ns, as_of) == expected


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def read_dead_letters(
    bootstrap: str, topic: str, n: int, within: float = 30
) -> list[tuple[bytes, dict[str, str]]]:
    """At least ``n`` records of the dead-letter topic (everything there is once ``n`` are read)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = await partition_count(bootstrap, topic)
        consumer.assign([TopicPartition(topic, p) for p in range(parts)])
        await consumer.seek_to_beginning()
        got: list[tuple[bytes, dict[str, str]]] = []
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            got += [(r.value, read_headers(r.headers)) for records in batches.values() for r in records]
            if len(got) >= n and not batches:
                break
        return got
    finally:
        await consumer.stop()


@dataclass
class RedisServer:
    """`redis-server` with AOF (everysec) on a port and directory of its own."""

    dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--dir",
            str(self.dir),
        ]
        with open(self.dir.parent / "redis.log", "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        client = sync_redis_client(f"redis://127.0.0.1:{self.port}/0")
        try:
            wait_until(lambda: pings(client), 20, "redis-server up")
        finally:
            client.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def partitions_of(bootstrap: str, topic: str) -> int | None:
    try:
        return asyncio.run(asyncio.wait_for(partition_count(bootstrap, topic), 5))
    except Exception:
        return None


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broker() -> Iterator[EmbeddedBroker]:
    """The embedded Kafka-compatible broker, one per test module."""
    with EmbeddedBroker() as running:
        yield running


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """``workers(settings, env=None)`` starts a `kpi worker` (``env``: extra environment variables);
    all are stopped at the end, and no process of the test's topic may outlive them (the
    supervisor's faust child included)."""
    started: list[Worker] = []
    topics: set[str] = set()

    def start(settings: Settings, env: dict[str, str] | None = None) -> Worker:
        port = free_port()
        log = tmp_path / f"worker-{len(started)}.log"
        assert settings.kafka_url is not None
        args = [
            "worker",
            "--kafka-url",
            settings.kafka_url,
            "--topic",
            settings.topic,
            "--group",
            settings.consumer_group,
            "--web-port",
            str(port),
            *cli_args(settings),
        ]
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [*KPI, *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )
        worker = Worker(proc, port, log)
        started.append(worker)
        topics.add(settings.topic)
        return worker

    yield start
    for worker in started:
        worker.stop()
    deadline = time.monotonic() + 15
    while (left := processes_mentioning(topics)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"processes left behind: {left}"


@pytest.fixture
def namespaces() -> Iterator[Callable[..., Settings]]:
    """``namespaces(**overrides)``: settings in a fresh namespace, deleted at the end."""
    made: list[Settings] = []

    def make(**overrides: Any) -> Settings:
        made.append(new_settings(**overrides))
        return made[-1]

    yield make

    async def clear() -> None:
        for settings in made:
            with contextlib.suppress(redis.RedisError, OSError):
                async with store_for(settings):
                    pass

    asyncio.run(clear())
