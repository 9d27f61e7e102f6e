"""The Prometheus configuration, checked by promtool (Debian package `prometheus`).

`promtool test rules` runs the alert unit tests in prometheus/tests/ against the
real rule engine; the coverage test below makes sure every alert has them.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.promql_exprs import iter_dashboard_exprs, render

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "prometheus"
RULES = sorted((PROMETHEUS / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not on PATH (Debian: apt-get install prometheus)",
)


def _promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    # A guard against a hung promtool, not a speed check: the rule tests replay weeks of series
    # (the fast drop rule's baseline needs 3) and took ~2 min on a loaded 2-core machine.
    result = subprocess.run(
        ["promtool", *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=900, check=False
    )
    assert result.returncode == 0, f"promtool {' '.join(map(str, args))}:\n{result.stdout}\n{result.stderr}"
    return result


def _alert_names() -> set[str]:
    names: set[str] = set()
    for path in RULES:
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            names.update(rule["alert"] for rule in group["rules"] if "alert" in rule)
    return names


def _alert_cases() -> list[dict[str, Any]]:
    cases = []
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            cases.extend(test.get("alert_rule_test", []))
    return cases


@needs_promtool
def test_rules_are_valid() -> None:
    assert RULES
    _promtool("check", "rules", *RULES)


@needs_promtool
def test_alert_unit_tests_pass() -> None:
    assert RULE_TESTS
    _promtool("test", "rules", *RULE_TESTS)


@needs_promtool
def test_prometheus_config_is_valid() -> None:
    result = _promtool("check", "config", PROMETHEUS / "prometheus.yml")
    for rule_file in RULES:
        assert rule_file.name in result.stdout, f"prometheus.yml does not load {rule_file.name}"


@needs_promtool
def test_dashboard_expressions_parse(tmp_path: Path) -> None:
    """Every dashboard query, variables filled in, is valid PromQL for promtool's parser."""
    rules = [
        {"record": f"dashboard:expr_{i}:check", "expr": render(item.expr)}
        for i, item in enumerate(iter_dashboard_exprs(rules=False))
    ]
    assert rules
    path = tmp_path / "dashboard_exprs.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}), encoding="utf-8")
    _promtool("check", "rules", path)


@pytest.mark.skipif(
    shutil.which("amtool") is None,
    reason="amtool not on PATH (Debian: apt-get install prometheus-alertmanager)",
)
def test_alertmanager_config_is_valid() -> None:
    path = PROMETHEUS / "alertmanager.yml"
    result = subprocess.run(
        ["amtool", "check-config", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"amtool check-config:\n{result.stdout}\n{result.stderr}"


@pytest.mark.skipif(
    shutil.which("amtool") is None,
    reason="amtool not on PATH (Debian: apt-get install prometheus-alertmanager)",
)
@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["area=sales", "alertname=SalesQualificationRateDropped", "scope=source", "source=web"], "sales"),
        (["area=sales", "alertname=SalesTargetBehindPace", "scope=rep:alice"], "sales"),
        (["area=pipeline", "alertname=KpiNoEventsReceived", "severity=critical"], "pipeline"),
        (["area=pipeline", "alertname=KpiConsumerLagGrowing", "severity=warning"], "pipeline"),
        (["alertname=Watchdog"], "null"),
    ],
)
def test_alertmanager_routes_sales_and_pipeline_apart(labels: list[str], receiver: str) -> None:
    """``amtool config routes test`` exits non-zero when the resolved receiver is not ``receiver``."""
    argv = ["amtool", "config", "routes", "test", f"--config.file={PROMETHEUS / 'alertmanager.yml'}"]
    result = subprocess.run(
        [*argv, f"--verify.receivers={receiver}", *labels],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, (
        f"{labels} -> {result.stdout.strip()}, expected {receiver}: {result.stderr}"
    )


def test_every_alert_has_firing_and_silent_unit_tests() -> None:
    cases = _alert_cases()
    for alert in sorted(_alert_names()):
        mine = [case for case in cases if case["alertname"] == alert]
        assert any(case.get("exp_alerts") for case in mine), f"{alert}: no test where it fires"
        assert any(not case.get("exp_alerts") for case in mine), f"{alert}: no test where it stays silent"
