"""The test oracle: DESIGN section 4 computed in one batch from a set of events.

This is the spec in code, written independently of ``kpi_state.kpis``, the store,
the Lua script and ``kpi_state.windows``: it sees every event at once, so every join
("the deal's lead", "the customer's first win") is a plain lookup, and every window
is a plain filter on ``occurred_at``.  Nothing here is incremental or clever.

Contract v2 (DESIGN section 2 "Corrections", docs/corrections.md): every lead and deal
is first resolved to its current view (tests/reference_entities.py: each attribute is its
latest statement); the KPIs count those views, placed in time by the event that fixed each fact.

Team interpretations where DESIGN is terse (see the docstrings below):

- ``all`` ignores ``as_of``: lifetime totals of everything applied; ``current`` too.
- ``leads`` and ``cohort_conversions`` need the lead's ``lead.created``; qualifications and
  conversions count without it. ``deals_created``, the initial stage entry, the sales cycle
  and the pipeline need the deal's ``deal.created``; won/lost/revenue do not.
- A lead converts once, at the outcome event of its first won deal; cohort conversions at
  the lead's creation.
- Conflicting facts (a second ``lead.created``/``deal.created`` under another event_id)
  keep the first one in the given order (the order they are applied in), as the store does.
- Past ``settings.dimension_cap`` distinct values of a dimension, later values (in
  applied order) count as ``"other"`` (``DimensionCap``); tests that compare unordered
  deliveries stay below the cap.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from typing import Any

from kpi_state.events import (
    CustomerChurned,
    DealCreated,
    Event,
    LeadCreated,
    RevenueRecorded,
    SpendRecorded,
    SurveyAnswered,
)
from kpi_state.settings import Settings
from tests.reference_entities import UNASSIGNED, UNKNOWN, DealView, Entities, of_type, order_key, resolve

WINDOW_NAMES = (
    "1h", "24h", "7d", "30d", "90d", "all",
    "today", "mtd", "qtd", "ytd", "mtd_prev", "qtd_prev", "ytd_prev",
)  # fmt: skip

FUNNEL_KPIS = (
    "leads",
    "qualified_leads",
    "qualification_rate",
    "lead_conversions",
    "conversion_rate",
    "cohort_conversions",
    "cohort_conversion_rate",
    "deals_created",
    "deals_won",
    "deals_lost",
    "win_rate",
    "revenue_won",
    "avg_deal_size",
    "new_customers",
    "sales_cycle_days",
)
SPEND_KPIS = ("spend", "spend_marketing", "spend_sales", "cac")
STAGE_KPIS = ("stage_entries", "stage_conversion_rate")
ECONOMICS_KPIS = (
    "revenue_recorded",
    "gross_margin",
    "churned_customers",
    "churn_rate",
    "arpa",
    "ltv",
    "ltv_cac_ratio",
    "nps",
    "csat",
    "sales_velocity",
)


# --------------------------------------------------------------------------- the event set


@dataclass
class EventSet:
    """The applied events, in the order applied. Built by ``accept``."""

    applied: list[Event]


OTHER = "other"


class DimensionCap:
    """The write-time dimension cap: per dimension, the first ``cap`` distinct values of the
    applied events, in applied order, keep their name; later ones are ``"other"``. The
    defaults and ``"other"`` itself are always themselves and take no place."""

    RESERVED = frozenset({UNASSIGNED, UNKNOWN, OTHER})

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.admitted: dict[str, set[str]] = {"rep": set(), "source": set(), "segment": set()}

    def label(self, dim: str, value: str | None) -> str | None:
        if value is None or value in self.RESERVED:
            return value
        admitted = self.admitted[dim]
        if value not in admitted and len(admitted) >= self.cap:
            return OTHER
        admitted.add(value)
        return value

    def relabel(self, e: Event) -> Event:
        """``e`` with each dimension value it carries replaced by its label."""
        update: dict[str, str | None] = {}
        for dim, name in (("rep", "rep_id"), ("source", "source"), ("segment", "segment")):
            if hasattr(e, name):
                update[name] = self.label(dim, getattr(e, name))
        return e.model_copy(update=update)


def accept(events: Iterable[Event], dimension_cap: int | None = None) -> EventSet:
    """Which events the store applies, in the order given.

    An event whose ``event_id`` was already applied is a duplicate (first wins). A
    second ``lead.created`` for a lead or a second ``deal.created`` for a deal is a
    conflict: rejected, and (not being applied) its ``event_id`` stays free. Several
    ``deal.won``/``deal.lost``/``deal.reopened`` of one deal are no conflict (contract v2).
    With ``dimension_cap``, applied events carry their dimension labels (``DimensionCap``)
    instead of the raw values.
    """
    cap = DimensionCap(dimension_cap) if dimension_cap is not None else None
    applied: list[Event] = []
    applied_ids: set[str] = set()
    created_leads: set[str] = set()
    created_deals: set[str] = set()
    for e in events:
        if e.event_id in applied_ids:
            continue
        if isinstance(e, LeadCreated):
            if e.lead_id in created_leads:
                continue
            created_leads.add(e.lead_id)
        if isinstance(e, DealCreated):
            if e.deal_id in created_deals:
                continue
            created_deals.add(e.deal_id)
        applied.append(cap.relabel(e) if cap is not None else e)
        applied_ids.add(e.event_id)
    return EventSet(applied)


# --------------------------------------------------------------------------- contributions


@dataclass(frozen=True)
class Contribution:
    """``value`` added to the summable quantity ``quantity`` at time ``at``.

    ``rep``/``source``/``segment`` are the dimension values it is attributed to, or None
    where the KPI has no breakdown by that dimension.
    """

    quantity: str
    at: datetime
    value: float
    rep: str | None = None
    source: str | None = None
    segment: str | None = None


def contributions(s: EventSet, entities: Entities, settings: Settings) -> list[Contribution]:
    """Every fact's contribution to the additive quantities, from the current views."""
    first_stage = settings.stage_names[0]
    out: list[Contribution] = []

    def amount(e: SpendRecorded | RevenueRecorded) -> float:
        if e.currency is None or e.currency == settings.currency:
            return float(e.amount)
        return e.amount * settings.rates[e.currency]

    def add(
        quantity: str,
        at: datetime,
        value: float,
        rep: str | None = None,
        source: str | None = None,
        segment: str | None = None,
    ) -> None:
        out.append(Contribution(quantity, at, value, rep, source, segment))

    def add_lead_based(quantity: str, at: datetime, lead_id: str) -> None:
        lead = entities.lead(lead_id)
        add(quantity, at, 1, lead.rep, lead.source, lead.segment)

    # Lead-based KPIs: the lead's current attributes; a deleted lead counts for nothing.
    live_leads = [lead for lead in entities.leads.values() if not lead.deleted]
    for lead in live_leads:
        if lead.created is not None:
            add_lead_based("leads", lead.created.occurred_at, lead.lead_id)
        if lead.first_qualified is not None:
            add_lead_based("qualified_leads", lead.first_qualified.occurred_at, lead.lead_id)

    def outcome_key(deal: DealView) -> tuple[datetime, str]:
        assert deal.outcome is not None
        return order_key(deal.outcome)

    won_deals = entities.live_won_deals()
    by_lead: dict[str, list[DealView]] = defaultdict(list)
    for deal in won_deals:
        if deal.lead_id is not None:
            by_lead[deal.lead_id].append(deal)
    for lead_id, deals in by_lead.items():
        lead = entities.lead(lead_id)
        if lead.deleted:
            continue
        first = min(deals, key=outcome_key)
        assert first.won is not None
        add_lead_based("lead_conversions", first.won.occurred_at, lead_id)
        if lead.created is not None:
            add_lead_based("cohort_conversions", lead.created.occurred_at, lead_id)

    # Deal-based KPIs: the deal's current owner, the source/segment of its current lead.
    for deal in entities.deals.values():
        if deal.deleted:
            continue
        dims = entities.deal_dims(deal)
        owner = deal.owner
        if deal.created is not None:
            add("deals_created", deal.created.occurred_at, 1, *dims)
            add("stage:" + (deal.created.stage or first_stage), deal.created.occurred_at, 1, rep=owner)
        for change in deal.stage_changes:
            add("stage:" + change.to_stage, change.occurred_at, 1, rep=change.rep_id or owner)
        if deal.won is not None:
            won_at = deal.won.occurred_at
            add("deals_won", won_at, 1, *dims)
            add("revenue_won", won_at, deal.amount, *dims)
            add("stage:won", won_at, 1, rep=owner)
            if deal.created is not None:
                days = (won_at - deal.created.occurred_at) / timedelta(days=1)
                add("cycle_count", won_at, 1, *dims)
                add("cycle_days", won_at, days, *dims)
        if deal.lost is not None:
            add("deals_lost", deal.lost.occurred_at, 1, *dims)

    by_customer: dict[str, list[DealView]] = defaultdict(list)
    for deal in won_deals:
        assert deal.won is not None
        by_customer[deal.won.customer_id].append(deal)
    for deals in by_customer.values():
        first = min(deals, key=outcome_key)
        assert first.won is not None
        add("new_customers", first.won.occurred_at, 1, *entities.deal_dims(first))

    # Spend: its own source only.
    for spend in of_type(s.applied, SpendRecorded):
        source = spend.source or UNKNOWN
        add("spend", spend.occurred_at, amount(spend), source=source)
        add("spend_" + spend.category, spend.occurred_at, amount(spend), source=source)

    # Customer economics: totals only.
    for revenue in of_type(s.applied, RevenueRecorded):
        margin = settings.default_gross_margin if revenue.gross_margin is None else revenue.gross_margin
        add("revenue_recorded", revenue.occurred_at, amount(revenue))
        add("margin_amount", revenue.occurred_at, amount(revenue) * margin)
    for churn in of_type(s.applied, CustomerChurned):
        add("churned_customers", churn.occurred_at, 1)
    for survey in of_type(s.applied, SurveyAnswered):
        if survey.kind == "nps":
            add("nps_responses", survey.occurred_at, 1)
            add("nps_promoters", survey.occurred_at, 1 if survey.score >= 9 else 0)
            add("nps_detractors", survey.occurred_at, 1 if survey.score <= 6 else 0)
        else:
            add("csat_responses", survey.occurred_at, 1)
            add("csat_positive", survey.occurred_at, 1 if survey.score >= 4 else 0)
    return out


# --------------------------------------------------------------------------- windows


def in_window(at: datetime, window: str, as_of: datetime, settings: Settings) -> bool:
    """DESIGN section 3: floor_g(T) - (n-1)*g <= occurred_at < floor_g(T) + g.

    Minute and hour buckets start at a whole minute/hour of the business timezone's wall
    clock; day buckets are local calendar days (starting at local midnight).
    """
    if window == "all":
        return True
    tz = settings.tz
    if window in _PERIOD_MONTHS:
        return _in_calendar_window(at.astimezone(tz).date(), window, as_of.astimezone(tz).date(), settings)
    if window == "1h" or window == "24h":
        local = as_of.astimezone(tz)
        into_bucket = timedelta(seconds=local.second, microseconds=local.microsecond)
        if window == "24h":
            into_bucket += timedelta(minutes=local.minute)
        g, n = (timedelta(minutes=1), 60) if window == "1h" else (timedelta(hours=1), 24)
        floor = as_of - into_bucket
        return floor - (n - 1) * g <= at < floor + g
    n = {"7d": 7, "30d": 30, "90d": 90}[window]
    today = as_of.astimezone(tz).date()
    return today - timedelta(days=n - 1) <= at.astimezone(tz).date() <= today


_PERIOD_MONTHS = {"today": 0, "mtd": 1, "qtd": 3, "ytd": 12, "mtd_prev": 1, "qtd_prev": 3, "ytd_prev": 12}


def _in_calendar_window(day: date, window: str, today: date, settings: Settings) -> bool:
    """DESIGN section 3, a plain filter on local dates: months are numbered from the fiscal
    year's first month (month 0 of fiscal year 0 = year 0's start month); a period of n months
    is a block of n such numbers. ``_prev``: as many days from the previous period's first day
    as the current period has had (counting T's day), not past the current period's start."""
    if window == "today":
        return day == today
    n = _PERIOD_MONTHS[window]

    def fiscal_month(d: date) -> int:
        return d.year * 12 + d.month - settings.fiscal_year_start_month

    def first_day(number: int) -> date:
        absolute = number + settings.fiscal_year_start_month - 1  # year * 12 + month - 1
        return date(absolute // 12, absolute % 12 + 1, 1)

    period = fiscal_month(today) // n
    start = first_day(period * n)
    if not window.endswith("_prev"):
        return start <= day <= today
    prev_start = first_day((period - 1) * n)
    days_so_far = (today - start).days + 1
    last = min(prev_start + timedelta(days=days_so_far - 1), start - timedelta(days=1))
    return prev_start <= day <= last


# --------------------------------------------------------------------------- KPI definitions


def div(num: float | None, den: float | None) -> float | None:
    """Every ratio: null when an input is null or the denominator is 0 or less."""
    if num is None or den is None or den <= 0:
        return None
    return num / den


class Sums:
    """Window sums of the additive quantities for one total or one dimension value."""

    def __init__(self) -> None:
        self._v: dict[str, float] = defaultdict(float)

    def add(self, quantity: str, value: float) -> None:
        self._v[quantity] += value

    def count(self, quantity: str) -> int:
        return int(self._v.get(quantity, 0))

    def money(self, quantity: str) -> float:
        return float(self._v.get(quantity, 0.0))


def funnel_kpis(w: Sums) -> dict[str, Any]:
    leads, qualified = w.count("leads"), w.count("qualified_leads")
    conversions, cohort = w.count("lead_conversions"), w.count("cohort_conversions")
    won, lost = w.count("deals_won"), w.count("deals_lost")
    revenue = w.money("revenue_won")
    return {
        "leads": leads,
        "qualified_leads": qualified,
        "qualification_rate": div(qualified, leads),
        "lead_conversions": conversions,
        "conversion_rate": div(conversions, leads),
        "cohort_conversions": cohort,
        "cohort_conversion_rate": div(cohort, leads),
        "deals_created": w.count("deals_created"),
        "deals_won": won,
        "deals_lost": lost,
        "win_rate": div(won, won + lost),
        "revenue_won": revenue,
        "avg_deal_size": div(revenue, won),
        "new_customers": w.count("new_customers"),
        "sales_cycle_days": div(w.money("cycle_days"), w.count("cycle_count")),
    }


def spend_kpis(w: Sums) -> dict[str, Any]:
    return {
        "spend": w.money("spend"),
        "spend_marketing": w.money("spend_marketing"),
        "spend_sales": w.money("spend_sales"),
        "cac": div(w.money("spend"), w.count("new_customers")),
    }


def stage_kpis(w: Sums, settings: Settings) -> dict[str, Any]:
    stages = [*settings.stage_names, "won"]
    entries = {stage: w.count("stage:" + stage) for stage in stages}
    return {
        "stage_entries": entries,
        "stage_conversion_rate": {
            stage: div(entries[following], entries[stage]) for stage, following in pairwise(stages)
        },
    }


def economics_kpis(
    w: Sums, funnel: dict[str, Any], cac: float | None, active_now: int, open_deals_now: int
) -> dict[str, Any]:
    revenue = w.money("revenue_recorded")
    churned = w.count("churned_customers")
    gross_margin = div(w.money("margin_amount"), revenue)
    active_at_start = active_now - w.count("new_customers") + churned
    churn_rate = div(churned, active_at_start)
    arpa = div(revenue, active_now)
    ltv = div(arpa * gross_margin if arpa is not None and gross_margin is not None else None, churn_rate)
    win_rate, avg_deal = funnel["win_rate"], funnel["avg_deal_size"]
    velocity_num = (
        open_deals_now * win_rate * avg_deal if win_rate is not None and avg_deal is not None else None
    )
    return {
        "revenue_recorded": revenue,
        "gross_margin": gross_margin,
        "churned_customers": churned,
        "churn_rate": churn_rate,
        "arpa": arpa,
        "ltv": ltv,
        "ltv_cac_ratio": div(ltv, cac),
        "nps": div(100 * (w.count("nps_promoters") - w.count("nps_detractors")), w.count("nps_responses")),
        "csat": div(w.count("csat_positive"), w.count("csat_responses")),
        "sales_velocity": div(velocity_num, funnel["sales_cycle_days"]),
    }


# --------------------------------------------------------------------------- current state


def current_state(s: EventSet, entities: Entities, settings: Settings) -> dict[str, Any]:
    """Not windowed: every applied event counts, whatever ``as_of``."""
    churned = {c.customer_id for c in of_type(s.applied, CustomerChurned)}
    won_customers = {d.won.customer_id for d in entities.live_won_deals() if d.won is not None}
    probability = {stage.name: stage.probability for stage in settings.stage_list}
    by_stage: dict[str, dict[str, Any]] = {
        stage: {"open_deals": 0, "value": 0.0} for stage in settings.stage_names
    }
    # Open deals: created, not deleted, outcome open; at their current stage and amount.
    for deal in entities.deals.values():
        if deal.created is None or deal.deleted or deal.outcome is not None:
            continue
        assert deal.stage is not None
        by_stage[deal.stage]["open_deals"] += 1
        by_stage[deal.stage]["value"] += deal.amount
    return {
        "active_customers": len(won_customers - churned),
        "pipeline": {
            "open_deals": sum(v["open_deals"] for v in by_stage.values()),
            "value": sum(v["value"] for v in by_stage.values()),
            "weighted_value": sum(v["value"] * probability[stage] for stage, v in by_stage.items()),
            "by_stage": by_stage,
        },
    }


# --------------------------------------------------------------------------- the document


DIMENSIONS = (("rep", "by_rep"), ("source", "by_source"), ("segment", "by_segment"))


def window_document(
    contribs: Sequence[Contribution], settings: Settings, active_now: int, open_deals_now: int
) -> dict[str, Any]:
    total = Sums()
    per_value: dict[str, dict[str, Sums]] = {dim: defaultdict(Sums) for dim, _ in DIMENSIONS}
    listed: dict[str, set[str]] = {dim: set() for dim, _ in DIMENSIONS}
    for c in contribs:
        total.add(c.quantity, c.value)
        for dim, _ in DIMENSIONS:
            value = getattr(c, dim)
            if value is None:
                continue
            per_value[dim][value].add(c.quantity, c.value)
            # Listed iff it has a non-zero contribution to one of the KPIs of its breakdown
            # (a contribution carries a dimension only for the KPIs broken down by it).
            if c.value != 0:
                listed[dim].add(value)

    funnel = funnel_kpis(total)
    spend = spend_kpis(total)
    doc: dict[str, Any] = {
        "total": {
            **funnel,
            **spend,
            **stage_kpis(total, settings),
            **economics_kpis(total, funnel, spend["cac"], active_now, open_deals_now),
        }
    }
    extra = {
        "rep": lambda w: stage_kpis(w, settings),
        "source": spend_kpis,
        "segment": lambda w: {},
    }
    for dim, key in DIMENSIONS:
        doc[key] = {
            value: {**funnel_kpis(per_value[dim][value]), **extra[dim](per_value[dim][value])}
            for value in sorted(listed[dim])
        }
    return doc


def reference_document(events: Sequence[Event], settings: Settings, as_of: datetime) -> dict[str, Any]:
    """The section-5 JSON document for ``events`` applied in the given order, read at ``as_of``
    (dimension values past ``settings.dimension_cap`` counted as ``"other"``)."""
    applied = accept(events, settings.dimension_cap)
    entities = resolve(applied.applied, settings)
    contribs = contributions(applied, entities, settings)
    current = current_state(applied, entities, settings)
    active_now = current["active_customers"]
    open_deals_now = current["pipeline"]["open_deals"]
    return {
        "as_of": as_of.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "currency": settings.currency,
        "windows": {
            window: window_document(
                [c for c in contribs if in_window(c.at, window, as_of, settings)],
                settings,
                active_now,
                open_deals_now,
            )
            for window in WINDOW_NAMES
        },
        "targets": [],  # none loaded: the property test compares the windows
        "current": current,
    }


# --------------------------------------------------------------------------- comparing documents


def differences(actual: Any, expected: Any, path: str = "$") -> list[str]:
    """Where two documents differ: keys exactly, None exactly, numbers within rounding.

    Money is rounded to micro-units by the store, so floats compare with
    rel 1e-9 / abs 1e-6; ints must be ints on both sides (counts are never floats).
    """
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path}: expected an object, got {actual!r}"]
        out = []
        for key in sorted(set(actual) | set(expected)):
            if key not in actual:
                out.append(f"{path}.{key}: missing (expected {expected[key]!r})")
            elif key not in expected:
                out.append(f"{path}.{key}: unexpected (got {actual[key]!r})")
            else:
                out.extend(differences(actual[key], expected[key], f"{path}.{key}"))
        return out
    if expected is None or actual is None or isinstance(expected, str | bool):
        return (
            []
            if actual == expected and type(actual) is type(expected)
            else [f"{path}: got {actual!r}, expected {expected!r}"]
        )
    if type(actual) is not type(expected):
        return [
            f"{path}: got {actual!r} ({type(actual).__name__}), expected {expected!r} "
            f"({type(expected).__name__})"
        ]
    if isinstance(expected, float):
        ok = math.isclose(actual, expected, rel_tol=1e-9, abs_tol=1e-6)
    else:
        ok = actual == expected
    return [] if ok else [f"{path}: got {actual!r}, expected {expected!r}"]


def assert_documents_match(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    problems = differences(actual, expected)
    assert not problems, "store document differs from the reference:\n" + "\n".join(problems[:40])
