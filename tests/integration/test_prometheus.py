"""Every dashboard panel and rule expression against a real Prometheus (DESIGN sections 1 and 5).

The stack, built once for the module:

- a namespace of its own on the test Redis, filled with 130 simulated days through
  ``KpiStore.apply`` (every window 1h..90d has history, and customers at its start),
  ending a few minutes ago;
- the embedded broker (Tansu); ``kpi serve --kafka-url`` (job ``kpi``), which also
  answers a few invalid events at its ingest, so ``kpi_events_rejected_total`` exists;
- ``kpi worker`` (job ``kpi-worker``) when the command exists: a burst of a few hundred
  events in the last minutes (every rep, source and segment of the history: leads,
  wins, losses, spend, revenue, surveys, churn) and some re-sent duplicates go through
  the broker to it (``kpi send``), while Prometheus scrapes. Without the command the
  burst is applied with ``KpiStore.apply`` and the expressions only a worker can feed
  are skipped, each with the reason (``WORKER_ONLY``); if the command exists but the
  worker does not start, those cases fail with its log and the others still run;
- Debian's ``prometheus`` scraping both every second, with the project's scrape jobs
  (targets replaced, relabelling kept) and rule files, evaluated every second.

All expressions are then evaluated at one instant (``Stack.at``), a few scrapes after
the burst was applied, so ``rate(x[1m])`` sees it however long the test cases take.
``rate``/``deriv`` over 5-15 minutes need two samples in the range, not the whole
range, so a few seconds of 1 s scrapes and evaluations give them data. The ingest
rejections happen before the first scrape: their counters exist but do not increase
while scraped, so the reject rates are 0 and ``KpiDeadLettersRising`` stays quiet.

Expectations:

- a panel target or recording rule returns at least one sample, not all NaN
  (``test_expression_has_data``); Grafana's variables are rendered with
  ``tests.promql_exprs`` defaults, and every option of a dashboard's ``window``
  variable is tried too;
- an alert expression is empty: the stack is healthy on purpose (the burst keeps the
  recent qualification, conversion, win and stage rates above their baselines, the worker
  keeps up).
  Empty could also mean "no data", so each alert has a ``HEALTHY`` witness, the
  negated condition, that must return samples. Firing cases are covered by
  ``promtool test rules`` (tests/integration/test_promtool.py);
- a few ``sales_*`` samples as stored by Prometheus equal the values of
  ``KpiReader.document`` (what ``kpi show --format json`` prints) for the same
  namespace, read ``as_of`` the sample's scrape time.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import typer.main
import yaml

from kpi_app.bootstrap import build_runtime
from kpi_app.cli import app as kpi_cli
from kpi_app.simulation import SimConfig, simulate_history
from kpi_state.events import REJECTION_REASONS, Rejection
from kpi_state.settings import Settings
from streams.broker import EmbeddedBroker, free_port
from streams.childproc import stop_groups
from streams.producer import EventProducer
from tests.conftest import new_settings
from tests.promql_exprs import (
    DEFAULT_VARIABLES,
    REPO,
    dashboard_files,
    iter_dashboard_exprs,
    load_dashboard,
    render,
    variables_in,
)

PROMETHEUS = shutil.which("prometheus")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        PROMETHEUS is None, reason="prometheus not on PATH (Debian: apt-get install prometheus)"
    ),
]

# 90 days plus a sales cycle: the 90d churn ratio (and LTV) needs customers that were
# already active when the 90d window starts.
HISTORY_DAYS = 130
HISTORY_GAP = timedelta(minutes=20)  # the history ends this long ago; the burst fills the gap
TOKEN = "prometheus-test-token"  # a bearer token for a throwaway kpi serve
SCRAPE_SECONDS = 1
START_TIMEOUT = 20.0  # per child process
WORKER_START_TIMEOUT = 30.0  # faust joins the group (a few seconds on Tansu), then reports ready
SETTLE_SCRAPES = 4  # scrapes (and rule evaluations) between "burst applied" and the query instant


def _kpi_commands() -> set[str]:
    return set(typer.main.get_command(kpi_cli).commands)  # type: ignore[attr-defined]


HAS_WORKER = "worker" in _kpi_commands()
HAS_SEND = "send" in _kpi_commands()
NO_WORKER_REASON = (
    "`kpi worker` does not exist in kpi_app/cli.py yet, and this needs {what}, which only a worker "
    "consuming from Kafka provides (kpi serve alone gives no sample, a constant 0, or NaN)"
)


# ---- the expressions -------------------------------------------------------------------

# An alert is healthy when its condition is false *on data*: these negated conditions
# must return samples while the alert expression itself returns none.
HEALTHY: dict[str, str] = {
    "KpiNoEventsReceived": "sum(rate(kpi_events_processed_total[15m])) > 0",
    # Either half of the `and` false is healthy; rejects happen before Prometheus starts
    # scraping, so the rate is 0 (the ratio is 0/0 without a worker).
    "KpiDeadLettersRising": "kpi:events_rejected:rate10m <= 0.1",
    "KpiConsumerLagGrowing": "topic:kpi_consumer_lag:sum <= 1000",
    "KpiEventToStateSlow": "kpi:event_to_state_seconds:p99_5m <= 1",
    "KpiScrapeTargetDown": 'up{job=~"kpi|kpi-worker"} == 1',
    "SalesTargetBehindPace": "target:sales_target_pace_ratio:max >= 0.9",
    # The drop alerts are an `and` of their z-score and guards: a z-score above the threshold
    # in every scope (with data) is healthy.
    "SalesQualificationRateDropped": "scope:sales_qualification:z_7d > -4",
    "SalesConversionDropped": "scope:sales_lead_conversion:z_7d > -3.5",
    "SalesWinRateDropped": "scope:sales_win:z_7d > -3.5",
    "SalesStageConversionDropped": "scope:sales_stage_conversion:z_7d > -4",
    "SalesQualificationRateDroppedFast": "scope:sales_qualification:z_48h_3w > -4",
}

# This Prometheus is seconds old: an `offset` of a day or weeks finds nothing, so the stack's
# copy of the rules and every queried expression drop their offsets. Each expression is still
# checked for names, labels and joins on live data (the fast qualification rule then compares
# the last 48h with 3 copies of itself: z = 0, quiet); what the offsets compare is promtool's
# job (prometheus/tests/sales_drops_fast_test.yml).
_OFFSET = re.compile(r"\s+offset\s+-?[0-9][0-9smhdwy]*")


def without_offsets(expr: str) -> str:
    return _OFFSET.sub("", expr)


# Series only a worker exports with a meaningful value (kpi serve's registry has them at
# 0, or not at all), and what depends on them.
WORKER_ONLY: dict[str, str] = {
    "kpi_consumer_lag": "kpi_consumer_lag",
    "topic:kpi_consumer_lag:sum": "kpi_consumer_lag",
    "kpi_event_to_state_seconds": "the kpi_event_to_state_seconds histogram",
    "kpi:event_to_state_seconds:p99_5m": "the kpi_event_to_state_seconds histogram",
    "kpi_last_event_timestamp_seconds": "kpi_last_event_timestamp_seconds (kpi serve exports 0)",
    "kpi:events_rejected:ratio_rate10m": "a non-zero rate of kpi_events_processed_total (else 0/0)",
    "sum(rate(kpi_events_processed_total[15m]))": "a non-zero rate of kpi_events_processed_total",
}


def _window_options() -> dict[str, list[str]]:
    """Dashboard file name -> the values its ``window`` variable offers."""
    out: dict[str, list[str]] = {}
    for path in dashboard_files():
        for var in load_dashboard(path).get("templating", {}).get("list", []):
            if var.get("name") == "window":
                out[path.name] = [o["value"] for o in var.get("options", [])]
    return out


@dataclass(frozen=True)
class Case:
    origin: str
    expr: str  # rendered
    alert: str | None

    def worker_only(self) -> str | None:
        text = self.origin + self.expr + (HEALTHY.get(self.alert, "") if self.alert else "")
        return next((what for key, what in WORKER_ONLY.items() if key in text), None)


def _cases() -> list[Case]:
    options = _window_options()
    cases: list[Case] = []
    for origin, expr in iter_dashboard_exprs():
        alert = origin.split(" alert ", 1)[1] if " alert " in origin else None
        windows = options.get(origin.split(" ", 1)[0], [])
        if windows and DEFAULT_VARIABLES["window"] not in windows:
            windows.append(DEFAULT_VARIABLES["window"])
        if "window" in variables_in(expr) and windows:
            cases += [
                Case(f"{origin} [window={w}]", without_offsets(render(expr, {"window": w})), alert)
                for w in windows
            ]
        else:
            cases.append(Case(origin, without_offsets(render(expr)), alert))
    return cases


CASES = _cases()
DATA_CASES = [pytest.param(c, id=c.origin) for c in CASES if c.alert is None]
ALERT_CASES = [pytest.param(c, id=c.origin) for c in CASES if c.alert is not None]


# ---- data ----------------------------------------------------------------------------


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Dimensions:
    reps: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    segments: list[str] = field(default_factory=list)


def history(settings: Settings, end: datetime) -> tuple[list[dict[str, object]], Dimensions]:
    config = SimConfig(seed=20260331, stages=settings.stage_names, leads_per_day=40)
    events = list(simulate_history(config, start=end - timedelta(days=HISTORY_DAYS), end=end))
    dims = Dimensions()
    for event in events:
        for key, values in (("rep_id", dims.reps), ("source", dims.sources), ("segment", dims.segments)):
            value = event.get(key)
            if isinstance(value, str) and value not in values:
                values.append(value)
    return events, dims


def burst(settings: Settings, dims: Dimensions, now: datetime) -> list[dict[str, object]]:
    """A few hundred events between 15 and 1 minutes ago touching every rep, source and
    segment: leads that qualify, deals that walk the stages and mostly win (so the recent
    rates stay above their baselines), spend, revenue, surveys, churn."""
    tag = uuid.uuid4().hex[:8]
    stages = settings.stage_names
    events: list[dict[str, object]] = []

    def add(type_: str, at: datetime, **fields: object) -> None:
        events.append({"event_id": f"b{tag}-{len(events)}", "type": type_, "occurred_at": _iso(at), **fields})

    base = now - timedelta(minutes=15)
    n = 3 * max(len(dims.reps), len(dims.sources), len(dims.segments))
    customers: list[str] = []
    for i in range(n):
        rep, lead, deal = dims.reps[i % len(dims.reps)], f"BL{tag}-{i}", f"BD{tag}-{i}"
        t = base + timedelta(seconds=10 * i)
        add(
            "lead.created",
            t,
            lead_id=lead,
            rep_id=rep,
            source=dims.sources[i % len(dims.sources)],
            segment=dims.segments[i % len(dims.segments)],
        )
        add("lead.qualified", t + timedelta(minutes=1), lead_id=lead)
        amount = 1000.0 + 250 * i
        add(
            "deal.created",
            t + timedelta(minutes=2),
            deal_id=deal,
            lead_id=lead,
            rep_id=rep,
            amount=amount,
            stage=stages[0],
        )
        for k, stage in enumerate(stages[1:], start=1):
            add("deal.stage_changed", t + timedelta(minutes=2, seconds=10 * k), deal_id=deal, to_stage=stage)
        outcome_at = t + timedelta(minutes=4)
        if i % 5 == 4:
            add("deal.lost", outcome_at, deal_id=deal, lead_id=lead, rep_id=rep, reason="price")
            continue
        customer = f"BC{tag}-{i}"
        customers.append(customer)
        add(
            "deal.won",
            outcome_at,
            deal_id=deal,
            lead_id=lead,
            rep_id=rep,
            customer_id=customer,
            amount=amount,
        )
        add(
            "revenue.recorded",
            outcome_at + timedelta(minutes=1),
            customer_id=customer,
            amount=amount / 12,
            gross_margin=0.7,
        )
        add(
            "survey.answered",
            outcome_at + timedelta(minutes=2),
            kind="nps",
            score=9 - i % 3,
            customer_id=customer,
        )
        add("survey.answered", outcome_at + timedelta(minutes=2), kind="csat", score=5 - i % 2)
    for source in dims.sources:
        add("spend.recorded", now - timedelta(minutes=10), amount=400.0, category="marketing", source=source)
    add("spend.recorded", now - timedelta(minutes=10), amount=900.0, category="sales")
    for customer in customers[:2]:
        add("customer.churned", now - timedelta(minutes=1), customer_id=customer)
    assert all(_iso(now) > str(e["occurred_at"]) for e in events)
    return events


async def apply_events(settings: Settings, raw: Sequence[Mapping[str, object]]) -> int:
    runtime = build_runtime(settings)
    try:
        now = datetime.now(UTC)
        parsed = [runtime.parser.parse_object(dict(e), now) for e in raw]
        bad = [p for p in parsed if isinstance(p, Rejection)]
        assert not bad, bad[:3]
        applied = 0
        for start in range(0, len(parsed), 2000):
            result = await runtime.store.apply(parsed[start : start + 2000])  # type: ignore[arg-type]
            assert not result.rejected, result.rejected[:3]
            applied += result.applied
        return applied
    finally:
        await runtime.aclose()


async def clear_namespace(settings: Settings) -> None:
    runtime = build_runtime(settings)
    try:
        await runtime.store.clear()
    finally:
        await runtime.aclose()


def send_to_topic(
    broker: EmbeddedBroker,
    settings: Settings,
    workdir: Path,
    events: Sequence[Mapping[str, object]],
    duplicates: Sequence[Mapping[str, object]],
) -> None:
    """``kpi send`` the events in batches, then the duplicates one per message (an
    ``EventProducer`` of our own if the command does not exist)."""
    if not HAS_SEND:

        async def produce() -> None:
            async with EventProducer(
                broker.bootstrap, settings.topic, client_id="test-prometheus"
            ) as producer:
                await producer.send_events(events, events_per_message=settings.message_batch, wait=True)
                await producer.send_events(duplicates, events_per_message=1, wait=True)

        asyncio.run(produce())
        return
    for name, chunk, batch in (("burst", events, settings.message_batch), ("duplicates", duplicates, 1)):
        path = workdir / f"{name}.jsonl"
        path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in chunk))
        argv = kpi_argv(
            "send", str(path), "--kafka-url", broker.url, "--batch", str(batch), "--no-progress", "--json"
        )
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, cwd=workdir)
        assert done.returncode == 0, f"kpi send: {done.stdout}\n{done.stderr}"
        assert orjson.loads(done.stdout.strip().splitlines()[-1])["events"] == len(chunk), done.stdout


# ---- processes -----------------------------------------------------------------------


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, n: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_bytes()[-n:].decode(errors="replace")
        return ""

    def stop(self, timeout: float = 10.0) -> None:
        stop_groups([self.proc], timeout)


def start_child(name: str, argv: list[str], workdir: Path, env: Mapping[str, str] | None = None) -> Child:
    log = workdir / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=workdir,
            start_new_session=True,  # its own process group: stopped with everything it started
        )
    return Child(name, proc, log)


class StartError(RuntimeError):
    pass


def wait_for(child: Child, what: str, ready: Callable[[], bool], timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if child.proc.poll() is not None:
            raise StartError(
                f"{child.name} exited with {child.proc.returncode} before {what}:\n{child.tail()}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if ready():
                return
        if time.monotonic() > deadline:
            raise StartError(f"{child.name}: no {what} after {timeout:.0f} s:\n{child.tail()}")
        time.sleep(0.1)


def kpi_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "kpi_app", *args]


def prometheus_config(serve_port: int, worker_port: int | None) -> dict[str, Any]:
    """The project's scrape jobs (names, paths, relabelling), aimed at our children."""
    project = yaml.safe_load((REPO / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in project["scrape_configs"]}
    targets = {"kpi": serve_port, "kpi-worker": worker_port}
    scrape_configs = []
    for name, port in targets.items():
        if port is None:
            continue
        job = {k: v for k, v in jobs[name].items() if not k.endswith("_sd_configs")}
        job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
        scrape_configs.append(job)
    return {
        "global": {
            "scrape_interval": f"{SCRAPE_SECONDS}s",
            "scrape_timeout": f"{SCRAPE_SECONDS}s",
            "evaluation_interval": f"{SCRAPE_SECONDS}s",
        },
        "rule_files": ["rules/*.yml"],
        "scrape_configs": scrape_configs,
    }


# ---- the stack -----------------------------------------------------------------------


@dataclass
class Stack:
    settings: Settings
    prometheus: str
    http: httpx.Client
    worker: bool
    worker_error: str | None = None  # `kpi worker` exists but did not start
    at: float = 0.0  # the instant every expression is evaluated at (epoch seconds)
    docs: dict[float, dict[str, Any]] = field(default_factory=dict)

    def query(self, expr: str, at: float | None = None) -> list[tuple[dict[str, str], float]]:
        params = {"query": expr}
        if at is not None or self.at:
            params["time"] = f"{at if at is not None else self.at:.3f}"
        response = self.http.get(f"{self.prometheus}/api/v1/query", params=params)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
        data = body["data"]
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        assert data["resultType"] == "vector", data
        return [(sample["metric"], float(sample["value"][1])) for sample in data["result"]]

    def value(self, expr: str, at: float | None = None) -> float | None:
        result = self.query(expr, at)
        assert len(result) <= 1, f"{expr}: {result}"
        return result[0][1] if result else None

    def document(self, as_of: float) -> dict[str, Any]:
        if as_of not in self.docs:

            async def read() -> dict[str, Any]:
                runtime = build_runtime(self.settings)
                try:
                    return await runtime.reader.document(datetime.fromtimestamp(as_of, UTC))
                finally:
                    await runtime.aclose()

            self.docs[as_of] = asyncio.run(read())
        return self.docs[as_of]


def _post_invalid_events(http: httpx.Client, serve: str) -> None:
    """Bad input at kpi serve's ingest: counted in its own kpi_events_rejected_total."""
    now = _iso(datetime.now(UTC))
    bad = [
        {"event_id": "bad-1", "type": "deal.won", "occurred_at": now, "deal_id": "D1"},  # missing_field
        {"event_id": "bad-2", "type": "deal.exploded", "occurred_at": now},  # unknown_type
        {
            "event_id": "bad-3",
            "type": "spend.recorded",
            "occurred_at": now,
            "amount": -5.0,
            "category": "marketing",
        },
    ]
    response = http.post(f"{serve}/events", json=bad, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 422, response.text
    assert {r["reason"] for r in response.json()["rejected"]} == {
        "missing_field",
        "unknown_type",
        "negative_amount",
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("prometheus-stack")
    settings = new_settings()
    children: list[Child] = []
    broker = EmbeddedBroker(log_path=workdir / "broker.log")
    http = httpx.Client(timeout=10.0)
    try:
        now = datetime.now(UTC).replace(microsecond=0)
        events, dims = history(settings, now - HISTORY_GAP)
        assert len(events) > 20_000 and len(dims.reps) >= 2, (len(events), dims)
        assert asyncio.run(apply_events(settings, events)) == len(events)
        recent = burst(settings, dims, now)

        broker.start()
        common = ["--redis-url", settings.redis_url, "--namespace", settings.namespace]
        serve_port = free_port()
        serve_url = f"http://127.0.0.1:{serve_port}"
        serve = start_child(
            "serve",
            kpi_argv("serve", "--port", str(serve_port), "--kafka-url", broker.url, *common),
            workdir,
            {"KPI_INGEST_TOKENS": TOKEN},
        )
        children.append(serve)
        wait_for(serve, "/healthz", lambda: http.get(f"{serve_url}/healthz").status_code == 200)
        _post_invalid_events(http, serve_url)
        # A target through the API (a month's leads; the history and the burst exceed it): the
        # sales_target* series and SalesTargetBehindPace's healthy side have data.
        month_target = [{"kpi": "leads", "period": f"{now:%Y-%m}", "scope": "total", "value": 1}]
        put = http.put(
            f"{serve_url}/api/targets", json=month_target, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert put.status_code == 200, put.text

        worker_port: int | None = None
        worker_error: str | None = None
        if HAS_WORKER:
            worker_port = free_port()
            worker_metrics = f"http://127.0.0.1:{worker_port}/metrics"
            worker = start_child(
                "worker",
                kpi_argv("worker", "--kafka-url", broker.url, "--web-port", str(worker_port), *common),
                workdir,
            )
            children.append(worker)
            try:
                wait_for(
                    worker,
                    "kpi_worker_ready 1.0 on /metrics",
                    lambda: "\nkpi_worker_ready 1.0" in http.get(worker_metrics).text,
                    WORKER_START_TIMEOUT,
                )
            except StartError as exc:
                # Only what needs a worker fails (with this log); the rest still runs.
                worker_error = str(exc)
                worker.stop()
                children.remove(worker)
                worker_port = None

        shutil.copytree(REPO / "prometheus" / "rules", workdir / "rules")
        for copy in (workdir / "rules").glob("*.yml"):
            copy.write_text(without_offsets(copy.read_text(encoding="utf-8")), encoding="utf-8")
        config = workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(prometheus_config(serve_port, worker_port)), encoding="utf-8")
        prom_port = free_port()
        prom = start_child(
            "prometheus",
            [
                str(PROMETHEUS),
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--web.enable-lifecycle",
                "--log.level=warn",
            ],
            workdir,
        )
        children.append(prom)
        s = Stack(
            settings,
            f"http://127.0.0.1:{prom_port}",
            http,
            worker=worker_port is not None,
            worker_error=worker_error,
        )
        wait_for(prom, "/-/ready", lambda: http.get(f"{s.prometheus}/-/ready").status_code == 200)
        jobs = 2 if s.worker else 1
        wait_for(
            prom, "scrapes of every target", lambda: len(s.query('up{job=~"kpi|kpi-worker"} == 1')) == jobs
        )

        # The burst, while Prometheus scrapes: through Kafka to the worker, or straight in.
        duplicates = recent[:20]
        if s.worker:
            send_to_topic(broker, settings, workdir, recent, duplicates)
            wait_for(
                prom,
                "every burst event applied by the worker and scraped",
                lambda: (
                    s.value('sum(kpi_events_processed_total{job="kpi-worker"})') == len(recent)
                    and s.value('sum(kpi_events_duplicate_total{job="kpi-worker"})') == len(duplicates)
                ),
            )
        else:
            assert asyncio.run(apply_events(settings, recent)) == len(recent)
        settled = time.time() + SETTLE_SCRAPES * SCRAPE_SECONDS
        wait_for(
            prom,
            f"{SETTLE_SCRAPES} more scrapes",
            lambda: time.time() > settled and s.value('min(timestamp(up{job="kpi"}))') > settled,  # type: ignore[operator]
        )
        s.at = time.time()
        yield s
    finally:
        for child in reversed(children):
            child.stop()
        broker.stop()
        http.close()
        asyncio.run(clear_namespace(settings))
        shutil.rmtree(workdir, ignore_errors=True)


# ---- tests ---------------------------------------------------------------------------


def _needs_worker(stack: Stack, what: str | None) -> None:
    if what is None or stack.worker:
        return
    if stack.worker_error is not None:
        pytest.fail(f"this needs {what}, but `kpi worker` did not start: {stack.worker_error}")
    pytest.skip(NO_WORKER_REASON.format(what=what))


@pytest.mark.parametrize("case", DATA_CASES)
def test_expression_has_data(stack: Stack, case: Case) -> None:
    _needs_worker(stack, case.worker_only())
    result = stack.query(case.expr)
    assert result, f"no data for {case.expr!r}"
    assert any(not math.isnan(v) for _, v in result), f"only NaN for {case.expr!r}: {result}"


@pytest.mark.parametrize("case", ALERT_CASES)
def test_alert_quiet_on_healthy_data(stack: Stack, case: Case) -> None:
    _needs_worker(stack, case.worker_only())
    assert case.alert is not None
    witness = HEALTHY[case.alert]
    assert stack.query(witness), f"the healthy condition of {case.alert} has no data: {witness}"
    assert stack.query(case.expr) == [], f"{case.alert} fires on a healthy stack"


def test_every_alert_has_a_healthy_witness() -> None:
    alerts = {c.alert for c in CASES if c.alert is not None}
    assert alerts == set(HEALTHY)


@pytest.mark.parametrize(
    ("selector", "path", "scale"),
    [
        ('sales_leads{window="30d"}', "windows.30d.total.leads", 1),
        ('sales_conversion_ratio{window="30d"}', "windows.30d.total.conversion_rate", 1),
        ('sales_revenue_won{window="30d",currency="EUR"}', "windows.30d.total.revenue_won", 1),
        ('sales_cycle_seconds{window="30d"}', "windows.30d.total.sales_cycle_days", 86400),
        ('sales_ltv_cac_ratio{window="30d"}', "windows.30d.total.ltv_cac_ratio", 1),
        ('sales_win_ratio{window="90d"}', "windows.90d.total.win_rate", 1),
        ('sales_leads{window="all"}', "windows.all.total.leads", 1),
        ('sales_leads{window="mtd"}', "windows.mtd.total.leads", 1),
        ('sales_revenue_won{window="qtd_prev",currency="EUR"}', "windows.qtd_prev.total.revenue_won", 1),
        (
            'sales_revenue_won_by_rep{window="30d",rep="alice",currency="EUR"}',
            "windows.30d.by_rep.alice.revenue_won",
            1,
        ),
        ('sales_cac_by_source{window="30d",source="web",currency="EUR"}', "windows.30d.by_source.web.cac", 1),
        (
            'sales_deals_won_by_segment{window="90d",segment="enterprise"}',
            "windows.90d.by_segment.enterprise.deals_won",
            1,
        ),
        ('sales_pipeline_weighted_value{currency="EUR"}', "current.pipeline.weighted_value", 1),
        ("sales_active_customers", "current.active_customers", 1),
    ],
)
def test_prometheus_values_equal_the_document(stack: Stack, selector: str, path: str, scale: int) -> None:
    """``kpi show --format json`` and Prometheus agree (the collector and the document
    share their counters and formulas). Read at the sample's own scrape time; no event
    arrives after the burst, and these windows move only at midnight."""
    assert stack.settings.currency == "EUR"
    result = stack.query(selector)
    assert len(result) == 1, f"{selector}: {result}"
    labels, value = result[0]
    assert labels["job"] == "kpi"
    scraped_at = stack.value(f"timestamp({selector})")
    assert scraped_at is not None
    node: Any = stack.document(scraped_at)
    for key in path.split("."):
        node = node[key]
    assert value == node * scale, f"{selector} = {value} in Prometheus, {path} = {node} in the document"


def test_ingest_rejections_of_kpi_serve_are_scraped(stack: Stack) -> None:
    by_reason = {m["reason"]: v for m, v in stack.query('kpi_events_rejected_total{job="kpi"}')}
    # Every reason has a series from the start (zero), so rate() sees the first reject.
    assert set(by_reason) == set(REJECTION_REASONS)
    assert {r: v for r, v in by_reason.items() if v} == {
        "missing_field": 1.0,
        "unknown_type": 1.0,
        "negative_amount": 1.0,
    }


def test_worker_applies_the_burst_and_drops_its_sales_copies(stack: Stack) -> None:
    _needs_worker(stack, "a worker's kpi_events_processed_total")
    assert stack.value('sum(kpi_worker_ready{job="kpi-worker"})') == 1
    assert stack.value('sum(increase(kpi_events_processed_total{job="kpi-worker"}[5m]))') > 0  # type: ignore[operator]
    # prometheus.yml keeps one copy of the sales_* gauges: kpi serve's.
    assert stack.query('count({__name__=~"sales_.*", job="kpi-worker"})') == []
    assert stack.query('count({__name__=~"sales_.*", job="kpi"})')
