"""Bucket arithmetic and window membership (DESIGN section 3)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from kpi_state.windows import WINDOW_BY_NAME, BucketClock, epoch_micros


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_epoch_micros_is_exact() -> None:
    assert epoch_micros(ts("1970-01-01T00:00:00.000001Z")) == 1
    assert epoch_micros(ts("2026-03-01T09:30:00.123456+01:00")) == 1772353800123456


def test_utc_buckets() -> None:
    clock = BucketClock(ZoneInfo("UTC"))
    b = clock.bucket_ids(ts("2026-03-01T09:30:59.999Z"))
    assert b.minute == int(ts("2026-03-01T09:30:00Z").timestamp())
    assert b.hour == int(ts("2026-03-01T09:00:00Z").timestamp())
    assert b.day == int(ts("2026-03-01T00:00:00Z").timestamp())


def test_window_edges_utc() -> None:
    clock = BucketClock(ZoneInfo("UTC"))
    as_of = ts("2026-03-31T10:15:00Z")
    start, end = clock.window_range(WINDOW_BY_NAME["1h"], as_of)
    assert (start, end) == (
        int(ts("2026-03-31T09:16:00Z").timestamp()),
        int(ts("2026-03-31T10:16:00Z").timestamp()),
    )
    start, end = clock.window_range(WINDOW_BY_NAME["24h"], as_of)
    assert (start, end) == (
        int(ts("2026-03-30T11:00:00Z").timestamp()),
        int(ts("2026-03-31T11:00:00Z").timestamp()),
    )
    start, end = clock.window_range(WINDOW_BY_NAME["7d"], as_of)
    assert (start, end) == (
        int(ts("2026-03-25T00:00:00Z").timestamp()),
        int(ts("2026-04-01T00:00:00Z").timestamp()),
    )
    assert len(clock.window_buckets(WINDOW_BY_NAME["90d"], as_of)) == 90
    assert clock.window_buckets(WINDOW_BY_NAME["all"], as_of) == []


def test_day_buckets_follow_local_midnight_across_dst() -> None:
    berlin = BucketClock(ZoneInfo("Europe/Berlin"))
    # 2026-03-29 is 23 hours long in Berlin (clocks go forward at 02:00).
    day = berlin.bucket_ids(ts("2026-03-29T12:00:00+02:00")).day
    assert day == int(ts("2026-03-29T00:00:00+01:00").timestamp())
    nxt = berlin.bucket_ids(ts("2026-03-30T00:00:00+02:00")).day
    assert nxt - day == 23 * 3600
    # 23:30 UTC on the 28th is already the 29th in Berlin.
    assert berlin.bucket_ids(ts("2026-03-28T23:30:00Z")).day == day
    start, end = berlin.window_range(WINDOW_BY_NAME["7d"], ts("2026-03-31T12:00:00Z"))
    assert start == int(ts("2026-03-25T00:00:00+01:00").timestamp())
    assert end == int(ts("2026-04-01T00:00:00+02:00").timestamp())


def test_half_hour_offset_aligns_hours_to_local_clock() -> None:
    kolkata = BucketClock(ZoneInfo("Asia/Kolkata"))
    b = kolkata.bucket_ids(ts("2026-03-01T10:45:00+05:30"))
    assert b.hour == int(ts("2026-03-01T10:00:00+05:30").timestamp())
    assert b.day == int(ts("2026-03-01T00:00:00+05:30").timestamp())


def test_floor_agrees_with_bucket_ids() -> None:
    clock = BucketClock(ZoneInfo("America/New_York"))
    t = datetime(2026, 11, 1, 5, 30, tzinfo=UTC)  # DST ends that morning in New York
    b = clock.bucket_ids(t)
    assert (clock.floor(t, "m"), clock.floor(t, "h"), clock.floor(t, "d")) == (b.minute, b.hour, b.day)
