"""`make backtest`: how well the sales drop alerts work, measured with `kpi alerts backtest`
(DESIGN section 9). Not a test: it prints figures and writes them into docs/alerts.md under
"## Measured quality".

- Drops: for every seed, size (30%, 50%, 70%) and scope (one source, the total), a history in
  which qualification AND lead -> customer conversion of that scope fall by the size from day
  ``DROP_DAY + (seed - 1) % 7`` (a channel drying up at both ends; the weekday varies with the
  seed, since the volume guards wait out weekends), ending ``AFTER_DROP_DAYS`` days later. Only
  the days after the 30-day baselines are full are backtested (from day ``BASELINE_DAYS``),
  which keeps a run affordable. Detection delay: the first firing of a sales alert that names the scope (label
  ``source`` for a source; neither ``source`` nor ``segment`` for the total) at or after the
  drop's start (an interval that began before it does not count).
- Calm: for every calm seed a ``CALM_DAYS``-day history without a drop, backtested from day
  ``BASELINE_DAYS`` to its end (one month). A false alarm is any firing interval of a sales alert.

Seeds 1..N (drops) and 101..100+N (calm) are the tuning seeds; the integration test
(tests/integration/test_backtest.py) holds out 9001 and 9002. Independent backtests run ``--jobs``
at a time (2 at most on this 2-core machine: each is a replay plus a Prometheus).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from kpi_app.simulation import SimConfig, simulate_history
from kpi_app.simulation.drops import RateDrop

REPO = Path(__file__).resolve().parents[1]
START = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday, in the past (events from the future are refused)
BASELINE_DAYS, DROP_DAY, AFTER_DROP_DAYS, CALM_DAYS = 30, 31, 7, 60
HEADING = "## Measured quality"
END_MARK = "<!-- end of make backtest output: notes below it are kept -->"


@dataclass(frozen=True)
class Job:
    seed: int
    days: int
    scope: str  # "source=web", "total", or "" (calm)
    size: float  # 0 when calm


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _sales_alerts(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [a for a in report["alerts"] if a["labels"].get("area") == "sales"]


def _names_scope(labels: dict[str, str], scope: str) -> bool:
    if scope == "total":
        return "source" not in labels and "segment" not in labels
    dim, value = scope.split("=", 1)
    return labels.get(dim) == value


def drop_start(seed: int) -> datetime:
    return START + timedelta(days=DROP_DAY + (seed - 1) % 7)


def run_job(job: Job, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    drop_at = drop_start(job.seed)
    drops: tuple[RateDrop, ...] = ()
    if job.size:
        where = {} if job.scope == "total" else {job.scope.split("=")[0]: job.scope.split("=")[1]}
        drops = tuple(RateDrop(rate, job.size, drop_at, **where) for rate in ("qualification", "conversion"))  # type: ignore[arg-type]
    history = workdir / f"h-{job.seed}-{job.scope or 'calm'}-{job.size}.jsonl"
    config = SimConfig(seed=job.seed, leads_per_day=args.leads_per_day, drops=drops)
    with open(history, "wb") as out:
        for event in simulate_history(config, start=START, end=START + timedelta(days=job.days)):
            out.write(orjson.dumps(event) + b"\n")
    argv = [
        sys.executable,
        "-m",
        "kpi_app",
        "alerts",
        "backtest",
        str(history),
        "--no-progress",
        "--format",
        "json",
    ]
    argv += [
        "--from",
        _iso(START + timedelta(days=BASELINE_DAYS)),
        "--to",
        _iso(START + timedelta(days=job.days)),
    ]
    argv += ["--step", args.step, "--rules", str(args.rules)]
    if args.redis_url:
        argv += ["--redis-url", args.redis_url]
    clock = time.perf_counter()
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False)
    history.unlink()
    if done.returncode != 0:
        raise RuntimeError(f"backtest of {job} failed: {done.stderr[-2000:]}")
    report = orjson.loads(done.stdout)
    alerts = _sales_alerts(report)
    result: dict[str, Any] = {"job": job, "seconds": time.perf_counter() - clock}
    if job.size:
        starts = [
            datetime.fromisoformat(start)
            for a in alerts
            if _names_scope(a["labels"], job.scope)
            for start, _ in a["firing"]
        ]
        after = [s for s in starts if s >= drop_at]
        result["delay_h"] = (min(after) - drop_at).total_seconds() / 3600 if after else None
        result["before_drop"] = sum(
            1 for a in alerts for s, _ in a["firing"] if datetime.fromisoformat(s) < drop_at
        )
    else:
        result["false_alarms"] = [(a["name"], a["labels"], a["firing"]) for a in alerts]
    return result


def _fmt_h(hours: float | None) -> str:
    return "-" if hours is None else f"{hours:.0f} h"


def summarise(results: list[dict[str, Any]], args: argparse.Namespace, seconds: float) -> str:
    lines = [
        HEADING,
        "",
        "`kpi alerts backtest HISTORY.jsonl --from T1 --to T2 [--step 1h] [--rules DIR]"
        " [--format json|table]` replays a history into a scratch Redis namespace step by step, samples"
        " the `sales_*` series the rules read with the collector's own code, evaluates the recording"
        " rules and then each alert in a real Prometheus (`for` and `keep_firing_for` applied as"
        " Prometheus does) and reports every alert's firing intervals. `kpi simulate --drop"
        " RATE:SCOPE:SIZE:START` (e.g. `qualification:source=web:0.7:2026-04-02T00:00:00Z`) makes"
        " histories with a known drop. This section is written by `make backtest`"
        " (bench/backtest_quality.py).",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} on a {os.cpu_count()}-core machine by `{args.command}`"
        f" ({seconds / 60:.0f} min, {args.jobs} backtests at a time)"
        f"{' -- REDUCED run' if args.reduced else ''}.",
        f"Histories from `kpi_app.simulation` at {args.leads_per_day:g} leads a day (source web: about"
        f" {args.leads_per_day * 0.3:.0f} a day), evaluated every {args.step} with the rules of"
        f" `{args.rules}` in a real Prometheus.",
        "",
        "Drops: qualification and lead -> customer conversion of the scope fall by the size from"
        f" day {DROP_DAY} + (seed - 1) mod 7 (Thursday to Wednesday), histories ending"
        f" {AFTER_DROP_DAYS} days after it, backtested from day {BASELINE_DAYS} (30-day baselines full),"
        f" seeds 1..{args.seeds}. Delay: from the drop's start to the first sales alert naming the scope.",
        "",
        "| drop | scope | caught | within 48 h | median delay | worst delay | alerts before the drop |",
        "|---|---|---|---|---|---|---|",
    ]
    for scope in args.scopes:
        for size in args.sizes:
            rows = [r for r in results if r["job"].size == size and r["job"].scope == scope]
            delays = [r["delay_h"] for r in rows if r["delay_h"] is not None]
            within = sum(1 for d in delays if d <= 48)
            before = sum(r["before_drop"] for r in rows)
            median = statistics.median(delays) if delays else None
            worst = max(delays) if len(delays) == len(rows) and delays else None
            worst_text = _fmt_h(worst) if worst is not None else f"not caught in {len(rows) - len(delays)}"
            lines.append(
                f"| {size:.0%} | {scope} | {len(delays)}/{len(rows)} | {within}/{len(rows)} |"
                f" {_fmt_h(median)} | {worst_text} | {before} |"
            )
    target = [r for r in results if r["job"].size == 0.7 and r["job"].scope != "total"]
    caught48 = sum(1 for r in target if r["delay_h"] is not None and r["delay_h"] <= 48)
    calm = [r for r in results if not r["job"].size]
    months = len(calm) * (CALM_DAYS - BASELINE_DAYS) / 30.44
    alarms = sum(len(firing) for r in calm for _, _, firing in r["false_alarms"])
    noisy = sum(1 for r in calm if r["false_alarms"])
    lines += [
        "",
        f"Calm: {len(calm)} histories of {CALM_DAYS} days without a drop (seeds 101..{100 + args.calm}),"
        f" backtested from day {BASELINE_DAYS}: {months:.1f} months evaluated, {alarms} false alarm"
        f" interval(s) ({alarms / months if months else 0:.2f} per month), {noisy} of {len(calm)}"
        " months with any.",
    ]
    if target:
        met = "met" if caught48 >= 0.9 * len(target) else "NOT met"
        lines += [
            "",
            f"Target, a 70% drop in one source caught within 48 h in >= 9 of 10 seeds: {met}"
            f" ({caught48}/{len(target)}).",
        ]
    if calm:
        met = "met" if alarms == 0 else "NOT met"
        lines += [f"Target, no false alarm in 10 calm months: {met} ({alarms} in {months:.1f} months)."]
    names: dict[str, int] = {}
    for r in calm:
        for name, labels, firing in r["false_alarms"]:
            where = labels.get("source") or labels.get("segment") or labels.get("stage") or ""
            key = f"{name} {labels.get('scope', '')} {where}".strip()
            names[key] = names.get(key, 0) + len(firing)
    if names:
        lines += [
            "",
            "False alarms by alert: " + ", ".join(f"{k}: {v}" for k, v in sorted(names.items())) + ".",
        ]
    return "\n".join(lines) + "\n"


def write_section(doc: Path, section: str) -> None:
    """Replace the generated part of the "## Measured quality" section of ``doc`` (up to
    ``END_MARK``, or the next "## " heading), or append the section; the rest is left alone."""
    text = doc.read_text(encoding="utf-8") if doc.exists() else "# Alerts\n"
    generated = section + "\n" + END_MARK + "\n"
    if HEADING in text:
        head, rest = text.split(HEADING, 1)
        if END_MARK in rest.split("\n## ", 1)[0]:
            tail = rest.split(END_MARK, 1)[1].lstrip("\n")
            text = head + generated + ("\n" + tail if tail else "")
        else:
            parts = rest.split("\n## ", 1)
            text = head + generated + ("\n## " + parts[1] if len(parts) > 1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + generated
    doc.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.backtest_quality")
    parser.add_argument("--seeds", type=int, default=10, help="drop histories per size and scope")
    parser.add_argument("--calm", type=int, default=10, help="calm histories (one month evaluated each)")
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--scopes", nargs="+", default=["source=web", "total"])
    parser.add_argument("--leads-per-day", type=float, default=120.0)
    parser.add_argument("--step", default="1h")
    parser.add_argument("--rules", type=Path, default=Path("prometheus/rules"))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--redis-url", default=os.environ.get("KPI_REDIS_URL"))
    parser.add_argument("--doc", default=str(REPO / "docs" / "alerts.md"), help="'' to write nothing")
    args = parser.parse_args(argv)
    args.reduced = args.seeds < 10 or args.calm < 10
    args.command = "python -m bench.backtest_quality " + " ".join(argv if argv is not None else sys.argv[1:])
    jobs = [
        Job(seed, (drop_start(seed) - START).days + AFTER_DROP_DAYS, scope, size)
        for scope in args.scopes
        for size in args.sizes
        for seed in range(1, args.seeds + 1)
    ]
    jobs += [Job(100 + i, CALM_DAYS, "", 0.0) for i in range(1, args.calm + 1)]
    clock = time.perf_counter()
    results: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="kpi-quality-") as tmp,
        ThreadPoolExecutor(max_workers=max(1, min(2, args.jobs))) as pool,
    ):
        futures = [pool.submit(run_job, job, args, Path(tmp)) for job in jobs]
        for n, future in enumerate(futures, 1):
            result = future.result()
            results.append(result)
            job = result["job"]
            outcome = (
                f"delay {_fmt_h(result['delay_h'])}"
                if job.size
                else f"{len(result['false_alarms'])} alerting label sets"
            )
            print(
                f"[{n}/{len(jobs)}] seed {job.seed} {job.scope or 'calm'} {job.size:.0%}: {outcome}"
                f" ({result['seconds']:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    section = summarise(results, args, time.perf_counter() - clock)
    print(section)
    if args.doc:
        write_section(Path(args.doc), section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
