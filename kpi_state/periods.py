"""Calendar windows (DESIGN section 3): today, month/quarter/year to date and their
like-for-like previous periods. Pure: local dates in, local dates and bucket plans out.

Every range is a half-open range of local calendar days ``[start, end)`` in the business
timezone; the store's day buckets are those days and its month buckets calendar months, so
a fiscal year starting in any month is a choice made at read time (no replay needed).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

PeriodKind = Literal["month", "quarter", "year"]
CALENDAR_WINDOWS: tuple[str, ...] = ("today", "mtd", "qtd", "ytd", "mtd_prev", "qtd_prev", "ytd_prev")
PERIOD_MONTHS: dict[PeriodKind, int] = {"month": 1, "quarter": 3, "year": 12}
_TO_DATE: dict[str, PeriodKind] = {"mtd": "month", "qtd": "quarter", "ytd": "year"}


def add_months(day: date, months: int) -> date:
    """The first of the month ``months`` after ``day``'s month (``day`` must be a first)."""
    index = day.year * 12 + day.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def period_start(day: date, kind: PeriodKind, fiscal_start_month: int = 1) -> date:
    """First day of the fiscal month / quarter / year that contains ``day``.

    Fiscal quarters are the three-month blocks of the fiscal year.
    """
    if kind == "month":
        return day.replace(day=1)
    # Months since the fiscal year's start, counted from 0.
    into_year = (day.month - fiscal_start_month) % 12
    into = into_year if kind == "year" else into_year % 3
    return add_months(day.replace(day=1), -into)


def period_end(start: date, kind: PeriodKind) -> date:
    """Exclusive end (the next period's first day) of the period that starts on ``start``."""
    return add_months(start, PERIOD_MONTHS[kind])


def calendar_range(window: str, today: date, fiscal_start_month: int = 1) -> tuple[date, date]:
    """``[start, end)`` local days of a calendar window when T's local day is ``today``.

    ``*_prev``: as many days as the period to date has (counting T's day), from the start of
    the previous period, capped at that period's end (Mar 31 -> Feb 1..Feb 28).
    """
    if window == "today":
        return today, today + timedelta(days=1)
    base = window.removesuffix("_prev")
    kind = _TO_DATE[base]
    start = period_start(today, kind, fiscal_start_month)
    if base == window:
        return start, today + timedelta(days=1)
    prev = add_months(start, -PERIOD_MONTHS[kind])
    days = (today - start).days + 1
    return prev, min(prev + timedelta(days=days), start)


def period_elapsed(today: date, start: date, kind: PeriodKind) -> float:
    """Fraction of the period's days elapsed at T, counting T's day (DESIGN section 4)."""
    total = (period_end(start, kind) - start).days
    return min(max((today - start).days + 1, 0), total) / total


@dataclass(frozen=True)
class BucketPlan:
    """Buckets to sum for one range: whole calendar months as month buckets, the rest as day
    buckets (both named by their first day)."""

    months: tuple[date, ...]
    days: tuple[date, ...]


def bucket_plan(start: date, end: date) -> BucketPlan:
    """Whole months of ``[start, end)`` as months, every other day as a day; newest first."""
    months: list[date] = []
    days: list[date] = []
    cur = start
    while cur < end:
        if cur.day == 1 and add_months(cur, 1) <= end:
            months.append(cur)
            cur = add_months(cur, 1)
        else:
            days.append(cur)
            cur += timedelta(days=1)
    return BucketPlan(tuple(reversed(months)), tuple(reversed(days)))


@dataclass(frozen=True)
class CalendarGroup:
    """Buckets summed in one group, newest first, with the cut (prefix length) of each window:
    ``keys`` are ("d" | "mo", first day); the last ``minus`` keys are subtracted."""

    keys: tuple[tuple[str, date], ...]
    cuts: tuple[tuple[str, int], ...]
    minus: int = 0


def range_keys(start: date, end: date) -> tuple[list[tuple[str, date]], int]:
    """Keys summing ``[start, end)`` (``start`` a month's first day), and how many of the last
    are subtracted: a partial month is its days, or the whole month minus the days after
    ``end`` when those are fewer (Oct 1-30 is October minus Oct 31: 2 keys, not 30)."""
    plan = bucket_plan(start, end)
    plus = [("d", d) for d in plan.days] + [("mo", m) for m in plan.months]
    if not plan.days:
        return plus, 0
    month = plan.days[-1].replace(day=1)
    tail = (add_months(month, 1) - end).days
    if tail + 1 >= len(plan.days):
        return plus, 0
    keys = [("mo", month)] + [("mo", m) for m in plan.months]
    keys += [("d", end + timedelta(days=k)) for k in range(tail)]
    return keys, tail


def calendar_groups(
    windows: set[str] | frozenset[str], today: date, fiscal_start_month: int = 1
) -> list[CalendarGroup]:
    """Read plan of the calendar windows asked for.

    today, mtd, qtd and ytd are nested prefixes of one list (T's month day by day, newest
    first, then the earlier months of the fiscal year), so they are one group: at most 31 day
    and 11 month buckets. Each ``_prev`` window is a group of its own (its days of a partial
    month, or that month minus its days after the window's end, then its whole months).
    """
    groups: list[CalendarGroup] = []
    to_date = [w for w in ("today", "mtd", "qtd", "ytd") if w in windows]
    if to_date:
        keys: list[tuple[str, date]] = []
        cuts: list[tuple[str, int]] = []
        month = today.replace(day=1)
        keys.extend(("d", today - timedelta(days=k)) for k in range((today - month).days + 1))
        year = period_start(today, "year", fiscal_start_month)
        quarter = period_start(today, "quarter", fiscal_start_month)
        cur = add_months(month, -1)
        while cur >= year:
            keys.append(("mo", cur))
            cur = add_months(cur, -1)
        quarter_months = (month.year * 12 + month.month) - (quarter.year * 12 + quarter.month)
        lengths = {
            "today": 1,
            "mtd": today.day,
            "qtd": today.day + quarter_months,
            "ytd": len(keys),
        }
        cuts = [(w, lengths[w]) for w in to_date]
        # Only the buckets of the longest window asked for (mtd alone reads no month bucket).
        groups.append(CalendarGroup(tuple(keys[: cuts[-1][1]]), tuple(cuts)))
    for window in ("mtd_prev", "qtd_prev", "ytd_prev"):
        if window in windows:
            keys, minus = range_keys(*calendar_range(window, today, fiscal_start_month))
            groups.append(CalendarGroup(tuple(keys), ((window, len(keys)),), minus))
    return groups
