"""Sample targets for `kpi demo`, sized from the backfilled history so the wall's quota row
shows a mix of ahead, on-track and behind from the first minute. Pure."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

from kpi_state.settings import Settings
from kpi_state.targets import Target, parse_period, period_name

# Stretch per rep (cycled): some reps are set to beat theirs, some to miss it.
_REP_STRETCH = (0.8, 1.0, 1.2, 1.5)
_REPS = 8


def sample_targets(events: Iterable[Mapping[str, object]], now: datetime, settings: Settings) -> list[Target]:
    """Month revenue and deals for the team, the quarter's leads, and month revenue for the
    top reps: each the history's last-30-day pace scaled to the period, times a stretch."""
    since = now - timedelta(days=30)
    revenue: dict[str, float] = defaultdict(float)
    created: dict[str, float] = defaultdict(float)  # open value per rep: a fallback early on
    deals = leads = 0
    for e in events:
        if datetime.fromisoformat(str(e["occurred_at"])) < since:
            continue
        kind, rep = e.get("type"), str(e.get("rep_id") or "unassigned")
        if kind == "deal.won":
            deals += 1
            revenue[rep] += float(e.get("amount") or 0)  # type: ignore[arg-type]
        elif kind == "deal.created":
            created[rep] += float(e.get("amount") or 0)  # type: ignore[arg-type]
        elif kind == "lead.created":
            leads += 1
    if not revenue:  # a history too short for any win yet: a third of the value created
        revenue = defaultdict(float, {rep: value / 3 for rep, value in created.items()})
    today = now.astimezone(settings.tz).date()
    fiscal = settings.fiscal_year_start_month
    month, quarter = period_name(today, "month", fiscal), period_name(today, "quarter", fiscal)
    # The history's 30-day pace scaled to each period's length in days.
    per_month = (parse_period(month, fiscal).end - parse_period(month, fiscal).start).days / 30
    per_quarter = (parse_period(quarter, fiscal).end - parse_period(quarter, fiscal).start).days / 30
    team = sum(revenue.values())
    out = [
        Target(kpi="revenue_won", period=month, value=round(team * per_month * 1.1, -3) or 1000.0),
        Target(kpi="deals_won", period=month, value=max(1.0, round(deals * per_month))),
        Target(kpi="leads", period=quarter, value=max(1.0, round(leads * per_quarter * 1.05))),
    ]
    top = sorted(revenue.items(), key=lambda kv: (-kv[1], kv[0]))[:_REPS]
    for i, (rep, amount) in enumerate(top):
        value = round(amount * per_month * _REP_STRETCH[i % len(_REP_STRETCH)], -2) or 100.0
        out.append(Target(kpi="revenue_won", period=month, scope=f"rep:{rep}", value=value))
    return out
