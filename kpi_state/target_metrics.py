"""``sales_target*`` families (DESIGN section 5): one series per target whose period contains
T, labelled ``kpi``, ``period``, ``scope`` (and ``currency`` for money). A null figure (a zero
target has no attainment or pace) is no sample."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from kpi_state.targets import MONEY_TARGETS


class _Family(Protocol):
    rows: list[tuple[tuple[str, ...], float]]


# (family, help, document key, carries the currency for money targets)
TARGET_FAMILIES = (
    ("sales_target", "Target (quota) of a KPI for a fiscal period and scope", "target", True),
    ("sales_target_attainment_ratio", "Period-to-date actual / target", "attainment", False),
    ("sales_target_pace_ratio", "Attainment / fraction of the period elapsed (>= 1: on pace)", "pace", False),
    ("sales_target_projected", "Period-to-date actual / fraction of the period elapsed", "projected", True),
    # Beside DESIGN's four: the alert on pace waits for a third of the period (prometheus/rules).
    ("sales_target_elapsed_ratio", "Fraction of the period's days elapsed, counting today", "elapsed", False),
)


def add_target_rows(
    family: Callable[[str, str, Iterable[str]], _Family], targets: Sequence[Mapping[str, Any]], currency: str
) -> None:
    """Rows of the evaluated targets (``KpiReader.evaluate_targets``), in sorted label order
    (currency, kpi, period, scope). Families are declared even with no target."""
    for name, help_text, key, priced in TARGET_FAMILIES:
        labels = ("kpi", "period", "scope", "currency") if priced else ("kpi", "period", "scope")
        fam = family(name, help_text, labels)
        for t in targets:
            value = t[key]
            if value is None:
                continue
            head = (currency,) if priced else ()
            if priced and t["kpi"] not in MONEY_TARGETS:
                # Counts carry no currency: an empty label value is the same as no label.
                head = ("",)
            fam.rows.append(((*head, t["kpi"], t["period"], t["scope"]), float(value)))
