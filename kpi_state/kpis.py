"""KPI definitions (DESIGN section 4) from a window's additive counters. Pure.

The store keeps integer counters per bucket; a window is the sum of its buckets,
and every ratio is computed here from the window's sums (never an average of
averages).  Money is counted in micro-units of the reporting currency and cycle
time in milliseconds, so sums are exact integers and a re-attribution that moves
a contribution away leaves exactly zero behind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

Dim = Literal["total", "rep", "source", "segment"]
# The dimensions a KPI is broken down by, in the one order every table of them follows.
DIMENSIONS: tuple[Dim, ...] = ("rep", "source", "segment")
DIM_CODES: dict[str, Dim] = {"r": "rep", "s": "source", "g": "segment"}
DIM_KEYS: dict[Dim, str] = {"rep": "by_rep", "source": "by_source", "segment": "by_segment", "total": "total"}

MICROS = 1_000_000
MS_PER_DAY = 86_400_000

# Counter codes shared with lua/apply.lua. Stage entries are "e:<stage>".
LEADS, QUALIFIED, CONVERSIONS, COHORT = "ld", "ql", "lc", "cc"
DEALS_CREATED, DEALS_WON, DEALS_LOST, REVENUE_WON = "dc", "dw", "dl", "rw"
NEW_CUSTOMERS, CYCLE_SUM_MS, CYCLE_COUNT = "nc", "cs", "cn"
SPEND, SPEND_MARKETING, SPEND_SALES = "sp", "sm", "ss"
REVENUE_RECORDED, MARGIN, CHURNED = "rr", "gm", "ch"
NPS_N, NPS_PROMOTERS, NPS_DETRACTORS, CSAT_N, CSAT_POSITIVE = "nn", "np", "nd", "qn", "qp"
STAGE_PREFIX = "e:"

# Counters each dimension carries (the "y" columns of the KPI table).
_FUNNEL = (
    LEADS,
    QUALIFIED,
    CONVERSIONS,
    COHORT,
    DEALS_CREATED,
    DEALS_WON,
    DEALS_LOST,
    REVENUE_WON,
    NEW_CUSTOMERS,
    CYCLE_SUM_MS,
    CYCLE_COUNT,
)
DIM_COUNTERS: dict[Dim, tuple[str, ...]] = {
    "rep": _FUNNEL,
    "source": (*_FUNNEL, SPEND, SPEND_MARKETING, SPEND_SALES),
    "segment": _FUNNEL,
}


@dataclass(frozen=True)
class Current:
    """Not-windowed state, as of the events seen."""

    active_customers: int
    open_deals: int


def ratio(num: float, den: float) -> float | None:
    """A ratio is null when its denominator is 0 or less."""
    return num / den if den > 0 else None


def _ratio_opt(num: float | None, den: float | None) -> float | None:
    if num is None or den is None:
        return None
    return ratio(num, den)


def money(micros: int) -> float:
    return micros / MICROS


def funnel_kpis(c: Mapping[str, int]) -> dict[str, object]:
    g = c.get
    leads = g(LEADS, 0)
    won = g(DEALS_WON, 0)
    lost = g(DEALS_LOST, 0)
    revenue = g(REVENUE_WON, 0)
    cycle_n = g(CYCLE_COUNT, 0)
    return {
        "leads": leads,
        "qualified_leads": g(QUALIFIED, 0),
        "qualification_rate": ratio(g(QUALIFIED, 0), leads),
        "lead_conversions": g(CONVERSIONS, 0),
        "conversion_rate": ratio(g(CONVERSIONS, 0), leads),
        "cohort_conversions": g(COHORT, 0),
        "cohort_conversion_rate": ratio(g(COHORT, 0), leads),
        "deals_created": g(DEALS_CREATED, 0),
        "deals_won": won,
        "deals_lost": lost,
        "win_rate": ratio(won, won + lost),
        "revenue_won": money(revenue),
        "avg_deal_size": ratio(money(revenue), won),
        "new_customers": g(NEW_CUSTOMERS, 0),
        "sales_cycle_days": ratio(g(CYCLE_SUM_MS, 0) / MS_PER_DAY, cycle_n),
    }


def spend_kpis(c: Mapping[str, int]) -> dict[str, object]:
    spend = money(c.get(SPEND, 0))
    return {
        "spend": spend,
        "spend_marketing": money(c.get(SPEND_MARKETING, 0)),
        "spend_sales": money(c.get(SPEND_SALES, 0)),
        "cac": ratio(spend, c.get(NEW_CUSTOMERS, 0)),
    }


def stage_kpis(c: Mapping[str, int], stages: Sequence[str]) -> dict[str, object]:
    names = [*stages, "won"]
    entries = {s: c.get(STAGE_PREFIX + s, 0) for s in names}
    conversion = {s: ratio(entries[nxt], entries[s]) for s, nxt in pairwise(names)}
    return {"stage_entries": entries, "stage_conversion_rate": conversion}


def economics_kpis(
    c: Mapping[str, int], current: Current, funnel: Mapping[str, object], cac: float | None
) -> dict[str, object]:
    revenue = money(c.get(REVENUE_RECORDED, 0))
    churned = c.get(CHURNED, 0)
    new_customers = c.get(NEW_CUSTOMERS, 0)
    gross_margin = ratio(money(c.get(MARGIN, 0)), revenue)
    churn_rate = ratio(churned, current.active_customers - new_customers + churned)
    arpa = ratio(revenue, current.active_customers)
    ltv = _ratio_opt(
        arpa * gross_margin if arpa is not None and gross_margin is not None else None, churn_rate
    )
    nps_n = c.get(NPS_N, 0)
    nps = ratio(100 * (c.get(NPS_PROMOTERS, 0) - c.get(NPS_DETRACTORS, 0)), nps_n)
    win_rate = funnel["win_rate"]
    avg_deal = funnel["avg_deal_size"]
    cycle = funnel["sales_cycle_days"]
    velocity = None
    if isinstance(win_rate, float) and isinstance(avg_deal, float) and isinstance(cycle, float):
        velocity = ratio(current.open_deals * win_rate * avg_deal, cycle)
    return {
        "revenue_recorded": revenue,
        "gross_margin": gross_margin,
        "churned_customers": churned,
        "churn_rate": churn_rate,
        "arpa": arpa,
        "ltv": ltv,
        "ltv_cac_ratio": _ratio_opt(ltv, cac),
        "nps": nps,
        "csat": ratio(c.get(CSAT_POSITIVE, 0), c.get(CSAT_N, 0)),
        "sales_velocity": velocity,
    }


def total_kpis(c: Mapping[str, int], stages: Sequence[str], current: Current) -> dict[str, object]:
    funnel = funnel_kpis(c)
    spend = spend_kpis(c)
    cac = spend["cac"]
    return {
        **funnel,
        **spend,
        **stage_kpis(c, stages),
        **economics_kpis(c, current, funnel, cac if isinstance(cac, float) else None),
    }


def dimension_kpis(c: Mapping[str, int], dim: Dim, stages: Sequence[str]) -> dict[str, object]:
    out = funnel_kpis(c)
    if dim == "source":
        out.update(spend_kpis(c))
    if dim == "rep":
        out.update(stage_kpis(c, stages))
    return out


def has_contribution(c: Mapping[str, int], dim: Dim) -> bool:
    """A dimension value is listed when it contributes non-zero to one of its KPIs."""
    if any(c.get(code, 0) != 0 for code in DIM_COUNTERS[dim]):
        return True
    return dim == "rep" and any(k.startswith(STAGE_PREFIX) and v != 0 for k, v in c.items())
