"""Calendar windows (DESIGN section 3): ranges, fiscal years and the read plan, hand-worked."""

from __future__ import annotations

from datetime import date

import pytest

from kpi_state.periods import (
    CALENDAR_WINDOWS,
    bucket_plan,
    calendar_groups,
    calendar_range,
    period_elapsed,
    period_start,
    range_keys,
)


def d(text: str) -> date:
    return date.fromisoformat(text)


@pytest.mark.parametrize(
    ("window", "start", "end"),
    [
        ("today", "2026-11-15", "2026-11-16"),
        ("mtd", "2026-11-01", "2026-11-16"),
        ("qtd", "2026-10-01", "2026-11-16"),
        ("ytd", "2026-01-01", "2026-11-16"),
        # like-for-like: Nov 1-15 vs Oct 1-15, Oct 1 - Nov 15 vs Jul 1 - Aug 15
        ("mtd_prev", "2026-10-01", "2026-10-16"),
        ("qtd_prev", "2026-07-01", "2026-08-16"),
        ("ytd_prev", "2025-01-01", "2025-11-16"),
    ],
)
def test_calendar_year(window: str, start: str, end: str) -> None:
    assert calendar_range(window, d("2026-11-15")) == (d(start), d(end))


@pytest.mark.parametrize(
    ("window", "start", "end"),
    [
        ("mtd", "2026-03-01", "2026-03-02"),
        # fiscal year from February: Q1 is Feb-Apr, so March 1 is the quarter's 29th day
        ("qtd", "2026-02-01", "2026-03-02"),
        ("ytd", "2026-02-01", "2026-03-02"),
        ("qtd_prev", "2025-11-01", "2025-11-30"),
        ("ytd_prev", "2025-02-01", "2025-03-02"),
    ],
)
def test_fiscal_year_from_february(window: str, start: str, end: str) -> None:
    assert calendar_range(window, d("2026-03-01"), 2) == (d(start), d(end))


def test_fiscal_year_straddles_the_calendar_year() -> None:
    # From February, January is the fiscal year's last month and Q4 is Nov-Jan.
    assert period_start(d("2026-01-20"), "year", 2) == d("2025-02-01")
    assert period_start(d("2026-01-20"), "quarter", 2) == d("2025-11-01")
    assert period_start(d("2026-12-31"), "quarter", 11) == d("2026-11-01")
    assert period_start(d("2026-10-31"), "year", 11) == d("2025-11-01")


def test_prev_is_capped_at_the_previous_period_end() -> None:
    # Mar 31: 31 days from Feb 1 would pass Feb 28, so Feb whole.
    assert calendar_range("mtd_prev", d("2026-03-31")) == (d("2026-02-01"), d("2026-03-01"))
    # Dec 31 of a leap year: 366 days, the previous year has 365.
    assert calendar_range("ytd_prev", d("2024-12-31")) == (d("2023-01-01"), d("2024-01-01"))
    # Mar 1 of a leap year is the 61st day: Jan 1 - Mar 2 the year before.
    assert calendar_range("ytd_prev", d("2024-03-01")) == (d("2023-01-01"), d("2023-03-03"))


def test_elapsed_counts_t_day() -> None:
    assert period_elapsed(d("2026-11-15"), d("2026-11-01"), "month") == 15 / 30
    assert period_elapsed(d("2026-11-30"), d("2026-11-01"), "month") == 1.0
    assert period_elapsed(d("2026-10-01"), d("2026-10-01"), "quarter") == 1 / 92


def test_bucket_plan_uses_whole_months() -> None:
    plan = bucket_plan(d("2025-10-01"), d("2025-12-30"))
    assert plan.months == (d("2025-11-01"), d("2025-10-01"))
    assert plan.days[0] == d("2025-12-29") and plan.days[-1] == d("2025-12-01") and len(plan.days) == 29


def test_to_date_windows_are_one_nested_group() -> None:
    groups = calendar_groups(set(CALENDAR_WINDOWS), d("2026-11-15"))
    to_date = groups[0]
    assert to_date.cuts == (("today", 1), ("mtd", 15), ("qtd", 16), ("ytd", 25))
    assert to_date.keys[:2] == (("d", d("2026-11-15")), ("d", d("2026-11-14")))
    assert to_date.keys[14] == ("d", d("2026-11-01"))
    assert to_date.keys[15:] == tuple(("mo", date(2026, m, 1)) for m in range(10, 0, -1))
    assert [g.cuts for g in groups[1:]] == [(("mtd_prev", 15),), (("qtd_prev", 16),), (("ytd_prev", 25),)]


def test_a_partial_month_is_read_the_shorter_way() -> None:
    # Oct 1-30: October minus Oct 31.
    assert range_keys(d("2026-10-01"), d("2026-10-31")) == (
        [("mo", d("2026-10-01")), ("d", d("2026-10-31"))],
        1,
    )
    # Jul 1 - Aug 20: July, August minus Aug 21-31 (11 days subtracted rather than 20 added).
    keys, minus = range_keys(d("2026-07-01"), d("2026-08-21"))
    assert keys[:2] == [("mo", d("2026-08-01")), ("mo", d("2026-07-01"))] and minus == 11
    assert keys[2:] == [("d", date(2026, 8, k)) for k in range(21, 32)]
    # Oct 1-15: its 15 days (October minus 16 days would be 17 keys).
    assert range_keys(d("2026-10-01"), d("2026-10-16")) == (
        [("d", date(2026, 10, k)) for k in range(15, 0, -1)],
        0,
    )
    # Whole months only: nothing subtracted.
    assert range_keys(d("2026-01-01"), d("2026-03-01")) == (
        [("mo", d("2026-02-01")), ("mo", d("2026-01-01"))],
        0,
    )


def test_a_window_alone_reads_only_its_buckets() -> None:
    (mtd,) = calendar_groups({"mtd"}, d("2026-11-15"))
    assert mtd.cuts == (("mtd", 15),) and mtd.keys == tuple(
        ("d", date(2026, 11, k)) for k in range(15, 0, -1)
    )
    (group,) = calendar_groups({"today", "qtd"}, d("2026-11-15"), 2)  # fiscal Q4 from Nov 1
    assert group.cuts == (("today", 1), ("qtd", 15)) and len(group.keys) == 15


def test_reads_stay_bounded() -> None:
    """ytd reads at most 31 day + 11 month buckets; each _prev at most 11 whole months and its
    partial month as at most 16 days, or that month and at most 15 days subtracted."""
    worst = 0
    for fiscal in range(1, 13):
        day = d("2024-01-01")
        while day < d("2026-01-01"):
            to_date, *prev = calendar_groups(set(CALENDAR_WINDOWS), day, fiscal)
            assert sum(1 for kind, _ in to_date.keys if kind == "mo") <= 11
            assert sum(1 for kind, _ in to_date.keys if kind == "d") <= 31
            for group in prev:
                worst = max(worst, len(group.keys))
                assert sum(1 for kind, _ in group.keys if kind == "d") <= 16
            day = day.fromordinal(day.toordinal() + 1)
    assert worst <= 28
