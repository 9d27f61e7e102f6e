"""`kpi alerts backtest` end to end: real Redis, real promtool and Prometheus, the repository's
rules (prometheus/rules/*.yml). A missing binary fails these tests (the command exits 1 saying
which), it never skips them.

The seeds here were not used to tune the rules' thresholds (bench/backtest_quality.py uses
seeds 1..N). The drop histories: 120 leads a day (web: about 36 a day), qualification and
conversion of source web down 70% from midnight of a Tuesday (day 36) or of a Friday (day 32),
backtested from day 30 (when the 30-day baseline is full) to 8 days after the drop. The calm
history: 90 days, the last 60 backtested.

Why two start days: the sales team (like the simulated one) does almost no qualification work
on weekends, so a drop that starts on a Friday has one working day of evidence before Monday.
The issue's "caught within 3 days" holds for drops starting Sunday to Thursday; a Friday start
is caught after the weekend, within 5 days (docs/alerts.md, "Measured quality", has the
delays by start day). Both are asserted, so neither can get worse unnoticed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from kpi_app.simulation import SimConfig, simulate_history
from kpi_app.simulation.drops import RateDrop
from tests.conftest import REDIS_URL

REPO = Path(__file__).resolve().parents[2]
START = datetime(2026, 3, 2, tzinfo=UTC)  # in the past, so no event is refused as from the future
HELD_OUT_DROP_SEED, HELD_OUT_CALM_SEED = 9001, 9002


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _history(path: Path, config: SimConfig, days: int) -> None:
    with open(path, "wb") as out:
        for event in simulate_history(config, start=START, end=START + timedelta(days=days)):
            out.write(orjson.dumps(event) + b"\n")


def _backtest(history: Path, first: datetime, last: datetime) -> dict[str, Any]:
    argv = [sys.executable, "-m", "kpi_app", "alerts", "backtest", str(history), "--from", _iso(first)]
    argv += [
        "--to",
        _iso(last),
        "--step",
        "1h",
        "--format",
        "json",
        "--no-progress",
        "--redis-url",
        REDIS_URL,
    ]
    done = subprocess.run(
        argv, cwd=REPO, capture_output=True, text=True, timeout=600, check=False, env=dict(os.environ)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = orjson.loads(done.stdout)
    return report


def _sales_alerts(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [a for a in report["alerts"] if a["labels"].get("area") == "sales"]


@pytest.mark.parametrize(
    ("drop_day", "caught_within"),
    [
        pytest.param(36, timedelta(days=3), id="tuesday-start-within-3-days"),
        pytest.param(32, timedelta(days=5), id="friday-start-within-5-days"),
    ],
)
def test_a_drop_in_one_source_fires_a_sales_alert_naming_it(
    tmp_path: Path, drop_day: int, caught_within: timedelta
) -> None:
    drop_at = START + timedelta(days=drop_day)
    assert drop_at.strftime("%A") == ("Tuesday" if drop_day == 36 else "Friday")
    drops = (
        RateDrop("qualification", 0.7, drop_at, source="web"),
        RateDrop("conversion", 0.7, drop_at, source="web"),
    )
    history = tmp_path / "drop.jsonl"
    _history(history, SimConfig(seed=HELD_OUT_DROP_SEED, leads_per_day=120, drops=drops), days=drop_day + 8)
    report = _backtest(history, START + timedelta(days=30), START + timedelta(days=drop_day + 8))
    assert report["rules_evaluated"], "no sales rule was evaluated"
    assert report["replay"]["rejected"] == {}
    naming_web = [
        datetime.fromisoformat(start)
        for alert in _sales_alerts(report)
        if alert["labels"].get("source") == "web"
        for start, _ in alert["firing"]
    ]
    after = [start for start in naming_web if start >= drop_at]
    assert after, f"no sales alert named source web after the drop: {report['alerts']}"
    delay = min(after) - drop_at
    assert delay <= caught_within, f"the first alert naming web fired {delay} after the drop"


def test_two_calm_months_fire_no_sales_alert(tmp_path: Path) -> None:
    history = tmp_path / "calm.jsonl"
    _history(history, SimConfig(seed=HELD_OUT_CALM_SEED, leads_per_day=120), days=90)
    report = _backtest(history, START + timedelta(days=30), START + timedelta(days=90))
    assert report["rules_evaluated"], "no sales rule was evaluated"
    fired = [(a["name"], a["labels"], a["firing"]) for a in _sales_alerts(report)]
    assert fired == [], f"false alarms in two calm months: {fired}"
