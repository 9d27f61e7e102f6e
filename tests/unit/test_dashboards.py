"""The provisioned Grafana dashboards: valid JSON, one datasource, sane PromQL.

Running the expressions against a real Prometheus is an integration test's job;
these checks need no server.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.promql_exprs import (
    DATASOURCE_UID,
    REPO,
    dashboard_files,
    iter_dashboard_exprs,
    iter_panel_exprs,
    iter_panels,
    load_dashboard,
    render,
    variables_in,
)

EXPECTED_UIDS = {"sales-wall.json": "sales-wall", "operations.json": "kpi-operations"}
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range", "__range_s", "__range_ms", "__interval_ms"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# A metric name not preceded by ':' (so recording rule names are not split apart).
_METRIC = re.compile(r"(?<![\w:])((?:sales|kpi)_[a-z0-9_]+)(?![\w:])")
_RECORDED = re.compile(r"(?<![\w:])([a-z_]+:[a-z0-9_:]+)(?![\w:])")
_STRING = re.compile(r""""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'""")

DASHBOARDS = dashboard_files()
EXPRS = list(iter_dashboard_exprs())


def _documented_metrics() -> set[str]:
    text = (REPO / "docs" / "metrics.md").read_text(encoding="utf-8")
    return set(re.findall(r"`((?:sales|kpi)_[a-z0-9_]+)`", text))


def _recording_rules() -> set[str]:
    names: set[str] = set()
    for path in sorted((REPO / "prometheus" / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            names.update(rule["record"] for rule in group["rules"] if "record" in rule)
    return names


def _ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def test_the_two_dashboards_exist() -> None:
    assert set(_ids(DASHBOARDS)) == set(EXPECTED_UIDS)


@pytest.mark.parametrize("path", DASHBOARDS, ids=_ids(DASHBOARDS))
def test_dashboard_is_a_provisionable_document(path: Path) -> None:
    dashboard = load_dashboard(path)
    assert dashboard["uid"] == EXPECTED_UIDS[path.name]
    assert dashboard["title"]
    assert 39 <= dashboard["schemaVersion"] < 42
    assert dashboard.get("id") is None, "provisioned dashboards must not pin a database id"
    panels = list(iter_panels(dashboard))
    assert panels
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {path.name}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=_ids(DASHBOARDS))
def test_every_panel_and_target_uses_the_provisioned_datasource(path: Path) -> None:
    for panel in iter_panels(load_dashboard(path)):
        where = f"{path.name} panel {panel.get('id')} {panel.get('title')!r}"
        assert panel.get("datasource") == {"type": "prometheus", "uid": DATASOURCE_UID}, where
        targets = panel.get("targets", [])
        assert targets, f"{where} has no query"
        ref_ids = [t["refId"] for t in targets]
        assert len(ref_ids) == len(set(ref_ids)), f"{where}: duplicate refId"
        for target in targets:
            uid = target.get("datasource", {}).get("uid")
            assert uid == DATASOURCE_UID, f"{where} target {target['refId']}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=_ids(DASHBOARDS))
def test_panels_fit_the_grid_without_overlapping(path: Path) -> None:
    taken: dict[tuple[int, int], Any] = {}
    for panel in iter_panels(load_dashboard(path)):
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']!r} overlaps {taken[(x, y)]!r}"
                taken[(x, y)] = panel["title"]


@pytest.mark.parametrize("item", EXPRS, ids=[e.origin for e in EXPRS])
def test_every_expression_is_non_empty(item: Any) -> None:
    assert item.expr.strip(), item.origin


def test_there_are_dashboard_and_rule_expressions() -> None:
    origins = [e.origin for e in EXPRS]
    assert any(o.startswith("sales-wall.json") for o in origins)
    assert any(o.startswith("operations.json") for o in origins)
    assert any(o.startswith("rules/") for o in origins)


@pytest.mark.parametrize("path", DASHBOARDS, ids=_ids(DASHBOARDS))
def test_expressions_only_use_defined_variables(path: Path) -> None:
    dashboard = load_dashboard(path)
    defined = {v["name"] for v in dashboard.get("templating", {}).get("list", [])} | GRAFANA_BUILTINS
    for item in iter_panel_exprs(path):
        assert variables_in(item.expr) <= defined, item.origin
        assert "$" not in render(item.expr), item.origin


def test_every_metric_used_is_documented() -> None:
    documented = _documented_metrics()
    recorded = _recording_rules()
    for item in EXPRS:
        expr = _STRING.sub('""', item.expr)  # label values are not metric names
        for name in _METRIC.findall(expr):
            base = next((name[: -len(s)] for s in HISTOGRAM_SUFFIXES if name.endswith(s)), name)
            assert {name, base} & documented, f"{item.origin}: {name} is not in docs/metrics.md"
        for name in _RECORDED.findall(expr):
            assert name in recorded, f"{item.origin}: no recording rule defines {name}"


def test_sales_wall_window_variable() -> None:
    dashboard = load_dashboard(REPO / "grafana" / "dashboards" / "sales-wall.json")
    (window,) = [v for v in dashboard["templating"]["list"] if v["name"] == "window"]
    assert [o["value"] for o in window["options"]] == ["24h", "7d", "30d", "90d"]
    assert window["query"] == "24h,7d,30d,90d"
    assert window["current"]["value"] == "30d"
    assert [o["value"] for o in window["options"] if o["selected"]] == ["30d"]


def test_sales_wall_period_variable_and_targets_row() -> None:
    """Calendar periods beside the rolling windows, deltas against <period>_prev (today against
    yesterday), and the targets' attainment and pace (DESIGN sections 3 and 4)."""
    dashboard = load_dashboard(REPO / "grafana" / "dashboards" / "sales-wall.json")
    (period,) = [v for v in dashboard["templating"]["list"] if v["name"] == "period"]
    assert [o["value"] for o in period["options"]] == ["today", "mtd", "qtd", "ytd"]
    assert period["query"] == "today,mtd,qtd,ytd" and period["current"]["value"] == "mtd"
    exprs = {p["title"]: p["targets"][0]["expr"] for p in iter_panels(dashboard)}
    assert 'window="$period"' in exprs["Revenue won ($period)"]
    change = exprs["Revenue vs previous period"]
    assert 'window="${period}_prev"' in change and "offset 1d" in change
    assert "sales_target_attainment_ratio" in exprs["Targets: attainment"]
    assert "target:sales_target_pace_ratio:max" in exprs["Targets: pace"]
    (pace,) = [p for p in iter_panels(dashboard) if p["title"] == "Targets: pace"]
    steps = pace["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [(s["color"], s["value"]) for s in steps] == [("red", None), ("blue", 0.9), ("green", 1.1)]


def test_sales_wall_ltv_cac_thresholds() -> None:
    dashboard = load_dashboard(REPO / "grafana" / "dashboards" / "sales-wall.json")
    (panel,) = [p for p in iter_panels(dashboard) if "sales_ltv_cac_ratio" in p["targets"][0]["expr"]]
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [(s["color"], s["value"]) for s in steps] == [("red", None), ("#EAB839", 1), ("green", 3)]


def test_datasource_provisioning_matches_the_dashboards() -> None:
    doc = yaml.safe_load((REPO / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (datasource,) = doc["datasources"]
    assert datasource["uid"] == DATASOURCE_UID
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
