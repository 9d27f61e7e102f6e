"""The dashboards as code (dashboards/): committed JSON in step with the code, and every
metric a query reads declared once and exported by the project.

Pure: the collector runs on a hand-made snapshot, the operational metrics on a fresh
registry; no server.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from dashboards.metrics import PROMETHEUS_OWN, Metric
from dashboards.render import DASHBOARDS, OUT_DIR, as_document, main, render, rendered
from kpi_state import kpis
from kpi_state.collector import KpiSnapshot, kpi_families
from kpi_state.opmetrics import OpMetrics
from kpi_state.settings import Settings
from tests.promql_exprs import REPO, iter_panels

FIX = "run `make dashboards` and commit grafana/dashboards/"

_STRING = re.compile(r""""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'""")
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NAME = re.compile(r"(?<![\w.:$])[a-zA-Z_:][\w:]*")
_KEYWORDS = {"offset", "bool", "and", "or", "unless", "inf", "nan", "atan2"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not in label
    matchers, ranges or groupings, not called (functions, aggregations), not keywords."""
    bare = _STRING.sub('""', expr)
    bare = _MATCHERS.sub("", bare)
    bare = _RANGE.sub("", bare)
    bare = _GROUPING.sub("", bare)
    names = set()
    for match in _NAME.finditer(bare):
        if bare[match.end() :].lstrip().startswith("(") or match.group().lower() in _KEYWORDS:
            continue
        names.add(match.group())
    return names


def generated_exprs() -> Iterator[tuple[str, str]]:
    for name, build in DASHBOARDS.items():
        for panel in iter_panels(as_document(build())):
            for target in panel.get("targets", []):
                yield f"{name} panel {panel['id']} {panel['title']!r} {target['refId']}", target["expr"]


def collector_exports() -> set[str]:
    """Every family kpi_state.collector declares, on a snapshot where every KPI and every
    breakdown (rep, source, segment) has data."""
    fields = dict.fromkeys(kpis.DIM_COUNTERS["source"], 1)
    for code, dim in kpis.DIM_CODES.items():
        fields.update({f"{counter}|{code}|x": 1 for counter in kpis.DIM_COUNTERS[dim]})
    current = {
        "active_customers": 1,
        "pipeline": {
            "open_deals": 1,
            "value": 1.0,
            "weighted_value": 0.5,
            "by_stage": {"prospecting": {"open_deals": 1, "value": 1.0}},
        },
    }
    snapshot = KpiSnapshot(as_of=datetime(2026, 3, 31, tzinfo=UTC), windows={"30d": fields}, current=current)
    return {family.name for family in kpi_families(snapshot, Settings(stages="prospecting:0.1,proposal:0.5"))}


def opmetrics_exports() -> set[str]:
    """Every series name kpi_state.opmetrics can export (counters' ``_total``, histograms'
    ``_bucket``/``_sum``/``_count``, gauges as named)."""
    registry = CollectorRegistry()
    OpMetrics(registry)
    names: set[str] = set()
    for family in registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        if family.type == "histogram":
            names.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
    return names


def recorded_names() -> set[str]:
    names: set[str] = set()
    for path in sorted((REPO / "prometheus" / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            names.update(rule["record"] for rule in group["rules"] if "record" in rule)
    return names


def documented_names() -> set[str]:
    text = (REPO / "docs" / "metrics.md").read_text(encoding="utf-8")
    return set(re.findall(r"`([a-z_:][a-z0-9_:]*)`", text))


EXPRS = list(generated_exprs())


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_committed_json_is_what_the_code_builds(name: str) -> None:
    committed = (OUT_DIR / name).read_text(encoding="utf-8")
    assert committed == rendered()[name], f"grafana/dashboards/{name} differs from dashboards/: {FIX}"


def test_every_dashboard_file_is_generated() -> None:
    on_disk = {path.name for path in OUT_DIR.glob("*.json")}
    assert on_disk == set(DASHBOARDS), f"hand-written or stale dashboards: {on_disk ^ set(DASHBOARDS)}"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_render_is_deterministic_sorted_and_indented(name: str) -> None:
    text = render(DASHBOARDS[name]())
    assert text == render(DASHBOARDS[name]())
    assert text.endswith("}\n") and not text.endswith("\n\n")
    assert text.splitlines()[1].startswith('  "') and not text.splitlines()[1].startswith("   ")

    def keys_sorted(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        assert keys == sorted(keys), f"{name}: keys out of order: {keys}"
        return dict(pairs)

    json.loads(text, object_pairs_hook=keys_sorted)


def test_make_dashboards_writes_only_what_differs(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    main(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == set(DASHBOARDS)
    assert all((tmp_path / n).read_text(encoding="utf-8") == t for n, t in rendered().items())
    capsys.readouterr()
    main(tmp_path)
    assert capsys.readouterr().out == "", "a second run rewrote files that were already current"


def test_metric_names_finds_selected_metrics_only() -> None:
    expr = (
        'max without (instance, job, window) (sales_leads{window="$period"}) / (max by (le) '
        '(rate(kpi_x_bucket[$__rate_interval])) or sum(up{job=~"kpi"} offset 1d)) - 1 '
        "+ time() - max(target:sales_target_pace_ratio:max) or vector(0)"
    )
    assert metric_names(expr) == {"sales_leads", "kpi_x_bucket", "up", "target:sales_target_pace_ratio:max"}


def test_there_are_generated_queries() -> None:
    assert {origin.split(" ", 1)[0] for origin, _ in EXPRS} == set(DASHBOARDS)


@pytest.mark.parametrize(("origin", "expr"), EXPRS, ids=[origin for origin, _ in EXPRS])
def test_every_metric_a_query_reads_is_declared(origin: str, expr: str) -> None:
    names = metric_names(expr)
    assert names, f"{origin}: no metric in {expr!r}"
    undeclared = names - {m.value for m in Metric}
    assert not undeclared, f"{origin}: {sorted(undeclared)} not in dashboards.metrics.Metric"


def test_every_declared_metric_is_exported_recorded_or_prometheus_own() -> None:
    exported = collector_exports() | opmetrics_exports()
    recorded = recorded_names()
    for metric in Metric:
        if metric in PROMETHEUS_OWN:
            continue
        if ":" in metric.value:
            assert metric.value in recorded, f"{metric.name}: no rule in prometheus/rules records {metric}"
        else:
            assert metric.value in exported, f"{metric.name}: the collector and opmetrics export no {metric}"


def test_every_declared_metric_is_documented() -> None:
    documented = documented_names()
    for metric in Metric:
        if metric in PROMETHEUS_OWN or ":" in metric.value:
            continue
        base = metric.value.removesuffix("_bucket").removesuffix("_total")
        assert {metric.value, base} & documented, f"{metric} is not in docs/metrics.md"


def test_every_declared_metric_is_used() -> None:
    used = set().union(*(metric_names(expr) for _, expr in EXPRS))
    unused = {m.value for m in Metric} - used
    assert not unused, f"declared but read by no panel: {sorted(unused)}"
