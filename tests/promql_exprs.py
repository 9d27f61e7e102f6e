"""Every PromQL expression the project ships: Grafana panel targets and rule ``expr``s.

Shared by the dashboard unit tests and by tests that run the expressions against a
real Prometheus. Expressions are yielded as written; Grafana variables (``$window``,
``$__rate_interval``, ...) stay in place until :func:`render` substitutes them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import yaml

REPO = Path(__file__).resolve().parents[1]
DASHBOARDS_DIR = REPO / "grafana" / "dashboards"
RULES_DIR = REPO / "prometheus" / "rules"
DATASOURCE_UID = "kpi-prometheus"

# Values for Grafana's variables when an expression is run outside Grafana.
DEFAULT_VARIABLES: dict[str, str] = {
    "window": "30d",
    "period": "mtd",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
}

_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)(?::\w+)?\]\]|\$(\w+)")


class PromQLExpr(NamedTuple):
    origin: str  # where it comes from, e.g. "sales-wall.json panel 5 'LTV : CAC' target A"
    expr: str


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS_DIR.glob("*.json"))


def rule_files() -> list[Path]:
    return sorted(RULES_DIR.glob("*.yml"))


def load_dashboard(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path.name}: a dashboard is a JSON object")
    return data


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def iter_panel_exprs(path: Path) -> Iterator[PromQLExpr]:
    for panel in iter_panels(load_dashboard(path)):
        for target in panel.get("targets", []):
            if "expr" in target:
                panel_name = f"panel {panel.get('id')} {panel.get('title')!r}"
                yield PromQLExpr(f"{path.name} {panel_name} target {target.get('refId')}", target["expr"])


def iter_rule_exprs() -> Iterator[PromQLExpr]:
    for path in rule_files():
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for group in doc["groups"]:
            for rule in group["rules"]:
                name = f"alert {rule['alert']}" if "alert" in rule else f"record {rule['record']}"
                yield PromQLExpr(f"rules/{path.name} {name}", rule["expr"])


def iter_dashboard_exprs(*, rules: bool = True) -> Iterator[PromQLExpr]:
    """Every dashboard target's ``expr`` and, unless ``rules=False``, every rule's ``expr``."""
    for path in dashboard_files():
        yield from iter_panel_exprs(path)
    if rules:
        yield from iter_rule_exprs()


def variables_in(expr: str) -> set[str]:
    return {next(g for g in m.groups() if g) for m in _VARIABLE.finditer(expr)}


def render(expr: str, variables: Mapping[str, str] | None = None) -> str:
    """``expr`` with Grafana's variables replaced, ready for Prometheus' query API."""
    values = {**DEFAULT_VARIABLES, **(variables or {})}

    def substitute(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name not in values:
            raise KeyError(f"no value for Grafana variable ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(substitute, expr)
