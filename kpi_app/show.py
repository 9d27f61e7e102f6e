"""`kpi show` tables: a readable rendering of the section-5 document."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Group
from rich.table import Table

from kpi_state.collector import MONEY_KPIS

_RATIOS = {
    "qualification_rate",
    "conversion_rate",
    "cohort_conversion_rate",
    "win_rate",
    "churn_rate",
    "gross_margin",
    "csat",
}
_DIM_COLUMNS = (
    "leads",
    "qualified_leads",
    "conversion_rate",
    "deals_won",
    "win_rate",
    "revenue_won",
    "avg_deal_size",
    "new_customers",
    "sales_cycle_days",
)


def fmt(name: str, value: Any, currency: str) -> str:
    if value is None:
        return "—"
    if isinstance(value, dict):
        return "  ".join(f"{k}={fmt(name, v, currency) if v is not None else '—'}" for k, v in value.items())
    if name in _RATIOS or name == "stage_conversion_rate":
        return f"{value:.1%}"
    if name in MONEY_KPIS:
        return f"{value:,.2f} {currency}"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return f"{value:,}"


def window_table(doc: Mapping[str, Any], window: str) -> Table:
    total = doc["windows"][window]["total"]
    table = Table(title=f"KPIs, window {window}, as of {doc['as_of']}", show_lines=False)
    table.add_column("KPI")
    table.add_column("value", justify="right")
    for name, value in total.items():
        table.add_row(name, fmt(name, value, doc["currency"]))
    return table


def dimension_table(doc: Mapping[str, Any], window: str, by: str) -> Table:
    rows: Mapping[str, Mapping[str, Any]] = doc["windows"][window][f"by_{by}"]
    columns = [*_DIM_COLUMNS, *(("spend", "cac") if by == "source" else ())]
    table = Table(title=f"KPIs by {by}, window {window}, as of {doc['as_of']}")
    table.add_column(by)
    for col in columns:
        table.add_column(col, justify="right")
    ordered = sorted(rows.items(), key=lambda kv: (-(kv[1].get("revenue_won") or 0), kv[0]))
    for name, kpis in ordered:
        table.add_row(name, *(fmt(col, kpis.get(col), doc["currency"]) for col in columns))
    return table


def current_table(doc: Mapping[str, Any]) -> Table:
    current = doc["current"]
    pipeline = current["pipeline"]
    currency = doc["currency"]
    table = Table(title="Current state")
    table.add_column("stage")
    table.add_column("open deals", justify="right")
    table.add_column("value", justify="right")
    for stage, row in pipeline["by_stage"].items():
        table.add_row(stage, f"{row['open_deals']:,}", fmt("spend", row["value"], currency))
    table.add_row(
        "[bold]pipeline",
        f"[bold]{pipeline['open_deals']:,}",
        f"[bold]{fmt('spend', pipeline['value'], currency)}",
    )
    table.add_row("weighted", "", fmt("spend", pipeline["weighted_value"], currency))
    table.add_row("active customers", f"{current['active_customers']:,}", "")
    return table


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def targets_table(doc: Mapping[str, Any]) -> Table:
    """The document's ``targets`` (the ones whose period contains T)."""
    currency = doc["currency"]
    table = Table(title=f"Targets, as of {doc['as_of']}")
    for col in ("kpi", "period", "scope"):
        table.add_column(col)
    for col in ("target", "actual", "attainment", "elapsed", "pace", "projected", "status", "coverage"):
        table.add_column(col, justify="right")
    for t in doc.get("targets", []):
        kpi = t["kpi"]
        coverage = "—" if t["coverage"] is None else f"{t['coverage']:.2f}x"
        projected = "—" if t["projected"] is None else fmt(kpi, t["projected"], currency)
        table.add_row(
            kpi, t["period"], t["scope"], fmt(kpi, t["target"], currency), fmt(kpi, t["actual"], currency),
            _ratio(t["attainment"]), _ratio(t["elapsed"]), "—" if t["pace"] is None else f"{t['pace']:.2f}",
            projected, t["status"] or "—", coverage,
        )  # fmt: skip
    return table


def render(doc: Mapping[str, Any], window: str, by: str | None) -> Group:
    if by is not None:
        return Group(dimension_table(doc, window, by))
    parts: list[Table] = [window_table(doc, window), current_table(doc)]
    if doc.get("targets"):
        parts.append(targets_table(doc))
    return Group(*parts)
