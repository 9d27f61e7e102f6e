"""``kpi alerts backtest``: a history replayed through the real rules in a real Prometheus.

Phases: (1) replay into a scratch Redis namespace, sampling the series the rules read at every
step (``stepper``); (2) write them as OpenMetrics and backfill a fresh TSDB; (3) start
Prometheus on it and evaluate the recording rules level by level with ``query_range`` on the
grid, backfilling each level's records (``__name__`` = the record, the rule's labels over the
result's, as Prometheus records them) and restarting Prometheus before the next level reads them;
(4) evaluate each alerting rule's expression over ``[start, end]`` with ``query_range`` and
apply ``for``/``keep_firing_for`` as Prometheus does (``alert_state``). The namespace, the temp
directory and the Prometheus process are removed whatever happens, Ctrl-C included.

Evaluation times are ``start + k*step``, ``start`` rounded up to a multiple of ``step`` and
``step`` a divisor of a day, so promtool's blocks (aligned to their length) keep one grid.
Series and records are also sampled over a warm-up before ``start`` (``warmup``; None: what
the rules' ``offset``s and ranges reach back, ``rules.lookback``), so a rule comparing with
``offset 21d`` sees at ``start`` what a long-running Prometheus would; alerts are evaluated from
``start`` only. History missing from the warm-up is missing to the rules, as on a new server.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from kpi_app.backtest.alert_state import firing_intervals
from kpi_app.backtest.openmetrics import SeriesBook, write_openmetrics
from kpi_app.backtest.prometheus import BacktestError, PrometheusServer, backfill_openmetrics, require_binary
from kpi_app.backtest.rules import Plan, Rule, expand_labels, load_rules, lookback, parse_duration, plan
from kpi_app.backtest.stepper import read_events, sample_series
from kpi_app.bootstrap import build_runtime
from kpi_app.replay import ReplaySummary
from kpi_state.settings import Settings

log = structlog.get_logger(__name__)
Progress = Callable[[str, int], Callable[[], None]]  # (description, total) -> advance()


@dataclass(frozen=True)
class BacktestSpec:
    history: Path
    start: datetime
    end: datetime
    step: timedelta
    rule_files: list[Path]
    prometheus: str | None = None
    promtool: str | None = None
    warmup: timedelta | None = None


@dataclass
class FiredAlert:
    name: str
    labels: dict[str, str]
    firing: list[tuple[datetime, datetime | None]]


@dataclass
class BacktestReport:
    start: datetime
    end: datetime
    step: timedelta
    evaluated: list[str]
    skipped: list[str]
    alerts: list[FiredAlert] = field(default_factory=list)
    replay: ReplaySummary = field(default_factory=ReplaySummary)
    samples: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        def iso(t: datetime | None) -> str | None:
            return None if t is None else t.astimezone(UTC).isoformat().replace("+00:00", "Z")

        return {
            "from": iso(self.start),
            "to": iso(self.end),
            "step_seconds": int(self.step.total_seconds()),
            "rules_evaluated": self.evaluated,
            "rules_skipped": self.skipped,
            "alerts": [
                {"name": a.name, "labels": a.labels, "firing": [[iso(s), iso(e)] for s, e in a.firing]}
                for a in self.alerts
            ],
            "replay": {
                "lines": self.replay.lines,
                "applied": self.replay.applied,
                "duplicates": self.replay.duplicates,
                "rejected": dict(sorted(self.replay.rejected.items())),
            },
            "samples": self.samples,
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
        }


def evaluation_times(start: datetime, end: datetime, step: timedelta) -> list[datetime]:
    """``start`` rounded up to a multiple of ``step`` since the epoch, then every ``step`` to ``end``."""
    step_s = int(step.total_seconds())
    if step_s < 2 or step != timedelta(seconds=step_s) or 86_400 % step_s:
        raise ValueError("--step must be whole seconds dividing a day (e.g. 5m, 15m, 1h)")
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("--from and --to need an offset (e.g. Z)")
    first = -(-int(start.timestamp()) // step_s) * step_s
    last = int(end.timestamp())
    if first > last:
        raise ValueError("--from must be before --to (at least one step apart)")
    return [datetime.fromtimestamp(t, UTC) for t in range(first, last + 1, step_s)]


def warmup_times(times: list[datetime], step: timedelta, warmup: timedelta) -> list[datetime]:
    """The grid times before ``times[0]`` within ``warmup`` (whole steps, rounded up), oldest first."""
    if warmup < timedelta(0):
        raise ValueError("--warmup must not be negative")
    count = -(-warmup // step)
    return [times[0] - step * k for k in range(count, 0, -1)]


def _no_progress(description: str, total: int) -> Callable[[], None]:
    return lambda: None


async def _sample(
    settings: Settings,
    spec: BacktestSpec,
    the_plan: Plan,
    times: list[datetime],
    report: BacktestReport,
    progress: Progress,
) -> Any:
    scratch = settings.model_copy(update={"namespace": f"backtest-{uuid.uuid4().hex}"})
    runtime = build_runtime(scratch)
    # A signal sets a flag checked at each step: cancelling the task was measured not to stop
    # the replay (a cancellation inside a Redis call was absorbed and the steps went on).
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM) if threading.current_thread() is threading.main_thread() else ()
    for sig in signals:
        loop.add_signal_handler(sig, interrupted.set)
    try:
        events = read_events(spec.history, runtime, report.replay)
        log.info("history read", events=len(events), lines=report.replay.lines, namespace=scratch.namespace)
        advance = progress("replay and sample", len(times))
        return await sample_series(
            runtime,
            events,
            times,
            the_plan.families,
            the_plan.windows,
            report.replay,
            advance,
            interrupted.is_set,
        )
    finally:
        try:
            await runtime.store.clear()
        finally:
            await runtime.aclose()
            for sig in signals:
                loop.remove_signal_handler(sig)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _record_level(
    server: PrometheusServer, rules: list[Rule], times: list[datetime], step_s: int
) -> SeriesBook:
    """Every record of ``rules`` at every time of ``times``, as Prometheus would store it."""
    book = SeriesBook()
    first, last = round(times[0].timestamp()), round(times[-1].timestamp())
    for rule in rules:
        assert rule.record is not None
        for labels, points in server.query_range(rule.expr, first, last, step_s):
            labels.pop("__name__", None)
            merged = sorted(
                {**labels, **{k: expand_labels(v, labels) for k, v in rule.labels.items()}}.items()
            )
            names = tuple(name for name, _ in merged)
            values = tuple(value for _, value in merged)
            for t, v in points:
                book.add(rule.record, names, [(values, v)], t)
    return book


def _evaluate(server: PrometheusServer, rule: Rule, times: list[datetime], step_s: int) -> list[FiredAlert]:
    assert rule.alert is not None
    grid = [round(t.timestamp() * 1000) for t in times]
    active: dict[int, set[tuple[tuple[str, str], ...]]] = {}
    for labels, points in server.query_range(rule.expr, grid[0] // 1000, grid[-1] // 1000, step_s):
        labels.pop("__name__", None)
        merged = {
            **labels,
            **{k: expand_labels(v, labels) for k, v in rule.labels.items()},
            "alertname": rule.alert,
        }
        key = tuple(sorted(merged.items()))
        for t, _ in points:
            active.setdefault(t, set()).add(key)
    hold = int(parse_duration(rule.hold).total_seconds() * 1000)
    keep = int(parse_duration(rule.keep_firing_for).total_seconds() * 1000)
    fired = firing_intervals(grid, active, hold, keep)

    def at(ms: int | None) -> datetime | None:
        return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)

    return [
        FiredAlert(rule.alert, dict(key), [(at(s) or times[0], at(e)) for s, e in intervals])
        for key, intervals in sorted(fired.items())
    ]


def run_backtest(spec: BacktestSpec, settings: Settings, progress: Progress = _no_progress) -> BacktestReport:
    prometheus = require_binary("prometheus", spec.prometheus)
    promtool = require_binary("promtool", spec.promtool)
    times = evaluation_times(spec.start, spec.end, spec.step)
    step_s = int(spec.step.total_seconds())
    the_plan = plan(load_rules(spec.rule_files))
    if not the_plan.alerts:
        raise BacktestError("no alerting rule reads a sales_* series in the rule files given")
    warmup = lookback(the_plan) if spec.warmup is None else spec.warmup
    sampled = warmup_times(times, spec.step, warmup) + times
    report = BacktestReport(
        times[0], times[-1], spec.step, [r.alert or "" for r in the_plan.alerts], the_plan.skipped
    )
    clock = time.perf_counter()
    book = asyncio.run(_sample(settings, spec, the_plan, sampled, report, progress))
    report.samples = book.samples
    report.seconds["replay"] = time.perf_counter() - clock
    log.info(
        "series sampled",
        samples=book.samples,
        families=len(book.families),
        seconds=round(report.seconds["replay"], 1),
    )
    workdir = Path(tempfile.mkdtemp(prefix="kpi-backtest-"))
    # SIGTERM stops the Prometheus phases like Ctrl-C (subprocess.run kills promtool on it).
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main else None
    # Just under a step: every sample sits on the grid, and Prometheus 2.x's lookback includes its
    # left end, so a lookback of a whole step would show a series one step after it vanished
    # (measured on 2.42), where a live Prometheus has a staleness marker at the next scrape.
    server = PrometheusServer(prometheus, workdir / "tsdb", workdir, lookback_s=step_s - 1)
    try:
        clock = time.perf_counter()
        (workdir / "tsdb").mkdir()
        with open(workdir / "series.om", "w", encoding="utf-8") as out:
            write_openmetrics(book, out)
        del book
        backfill_openmetrics(promtool, workdir / "series.om", workdir / "tsdb")
        server.start()
        advance = progress("recording rules", len(the_plan.levels))
        for level, rules in enumerate(the_plan.levels):
            records = _record_level(server, rules, sampled, step_s)
            if not records.samples:  # nothing to add: the server already sees all there is
                advance()
                continue
            with open(workdir / f"level{level}.om", "w", encoding="utf-8") as out:
                write_openmetrics(records, out)
            backfill_openmetrics(promtool, workdir / f"level{level}.om", workdir / "tsdb")
            server.restart()
            advance()
        report.seconds["recording_rules"] = time.perf_counter() - clock
        clock = time.perf_counter()
        advance = progress("alerting rules", len(the_plan.alerts))
        for rule in the_plan.alerts:
            report.alerts.extend(_evaluate(server, rule, times, step_s))
            advance()
        report.seconds["alerting_rules"] = time.perf_counter() - clock
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    log.info(
        "backtest done",
        alerts=len(report.alerts),
        seconds={k: round(v, 1) for k, v in report.seconds.items()},
    )
    return report
