"""The read-time label cap of the ``sales_*`` gauges (contract: ``kpi_state.collector``). Pure.

Per dimension, when more than ``cap`` distinct values have a contribution over all windows, the
``cap - 1`` most important keep their label and the rest are summed into ``"other"``, in every
window alike. Importance is the lifetime (``all`` window) contribution: money first, then
activity, then name. Folding sums counters; the ratios are recomputed from the sums later.
"""

from __future__ import annotations

from collections.abc import Mapping

from kpi_state import kpis
from kpi_state.kpis import Dim
from kpi_state.report import Counters

OTHER = "other"


def importance(counters: Mapping[str, int]) -> tuple[int, int]:
    """(money, activity) of one dimension value; larger is more important."""
    c = counters.get
    money = c(kpis.REVENUE_WON, 0) + c(kpis.SPEND, 0)
    activity = c(kpis.LEADS, 0) + c(kpis.DEALS_CREATED, 0) + c(kpis.DEALS_WON, 0) + c(kpis.DEALS_LOST, 0)
    activity += sum(v for k, v in counters.items() if k.startswith(kpis.STAGE_PREFIX))
    return money, activity


def kept_values(
    per_window: Mapping[str, Mapping[Dim, Mapping[str, Counters]]], dim: Dim, cap: int
) -> frozenset[str] | None:
    """Values of ``dim`` that keep their own label, or None when no cap applies."""
    universe = {
        value
        for dims in per_window.values()
        for value, counters in dims[dim].items()
        if kpis.has_contribution(counters, dim)
    }
    if len(universe) <= cap:
        return None
    lifetime = per_window["all"][dim] if "all" in per_window else {}

    def rank(value: str) -> tuple[int, int, str]:
        money, activity = importance(lifetime.get(value, {}))
        return -money, -activity, value

    ranked = sorted((v for v in universe if v != OTHER), key=rank)
    return frozenset(ranked[: cap - 1])


def fold(values: Mapping[str, Counters], dim: Dim, kept: frozenset[str] | None) -> list[tuple[str, Counters]]:
    """The exported (label value, counters) of one dimension in one window, sorted by name."""
    listed = [(v, c) for v, c in sorted(values.items()) if kpis.has_contribution(c, dim)]
    if kept is None:
        return listed
    out: list[tuple[str, Counters]] = []
    rest: Counters = {}
    for value, counters in listed:
        if value in kept:
            out.append((value, counters))
            continue
        for code, n in counters.items():
            rest[code] = rest.get(code, 0) + n
    if kpis.has_contribution(rest, dim):
        out.append((OTHER, rest))
    return out
