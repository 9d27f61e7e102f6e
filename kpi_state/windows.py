"""Event-time buckets and rolling windows (DESIGN section 3). Pure: no I/O.

A bucket is named by the epoch second at which it starts.  Minute and hour
buckets start where the business timezone's wall clock shows a whole minute or
hour (for whole-hour offsets that is the UTC boundary); day buckets start at
local midnight, so a DST day is 23 or 25 hours long; month buckets start at the local
midnight of a month's first day (calendar months: the fiscal year is applied at read time).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo

from kpi_state.periods import CALENDAR_WINDOWS

Granularity = Literal["m", "h", "d"]
GRANULARITIES: tuple[Granularity, ...] = ("m", "h", "d")
ROLLING_WINDOW_NAMES: tuple[str, ...] = ("1h", "24h", "7d", "30d", "90d", "all")
# Every window a reader answers: the rolling ones, then the calendar ones (periods.py).
WINDOW_NAMES: tuple[str, ...] = ROLLING_WINDOW_NAMES + CALENDAR_WINDOWS


@dataclass(frozen=True)
class Window:
    name: str
    granularity: Granularity | None  # None: lifetime totals
    buckets: int


WINDOWS: tuple[Window, ...] = (
    Window("1h", "m", 60),
    Window("24h", "h", 24),
    Window("7d", "d", 7),
    Window("30d", "d", 30),
    Window("90d", "d", 90),
    Window("all", None, 0),
)
WINDOW_BY_NAME = {w.name: w for w in WINDOWS}
# Nominal bucket length, for retention arithmetic (day buckets may be 23/25 h long).
NOMINAL_SECONDS: dict[Granularity, int] = {"m": 60, "h": 3600, "d": 86400}
# Buckets kept per granularity (plus a margin). Day buckets: ytd_prev reads the days of a
# partial month up to a year and a month back (366 + 31 days); month buckets ("mo", nominally
# 31 days): ytd_prev starts at most 23 months before T's month, so two fiscal years and a month.
LONGEST_BUCKETS: dict[Granularity, int] = {"m": 60, "h": 24, "d": 400}
MONTH_BUCKETS_KEPT = 25
MONTH_NOMINAL_SECONDS = 31 * 86400

_EPOCH = datetime(1970, 1, 1).replace(tzinfo=ZoneInfo("UTC"))


def epoch_micros(ts: datetime) -> int:
    """Exact integer microseconds since the epoch (no float rounding)."""
    delta = ts - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass(frozen=True)
class BucketIds:
    minute: int
    hour: int
    day: int
    month: int


class BucketClock:
    """Maps instants to bucket starts in one business timezone."""

    def __init__(self, tz: ZoneInfo) -> None:
        self._tz = tz
        self._utc = tz.key == "UTC"
        self._midnight = lru_cache(maxsize=4096)(self._local_midnight)
        self._month_of = lru_cache(maxsize=4096)(self._month_start)

    def _local_midnight(self, day: date) -> int:
        return int(datetime.combine(day, time(0), tzinfo=self._tz).timestamp())

    def _month_start(self, day_start: int) -> int:
        """Month bucket (local midnight of the 1st) of the day bucket starting at ``day_start``."""
        local = datetime.fromtimestamp(day_start, self._tz).date()
        return self._midnight(local.replace(day=1))

    def local_midnight(self, day: date) -> int:
        """Start (epoch s) of the day bucket, or of the month bucket if ``day`` is a 1st."""
        return self._midnight(day)

    def _offset_seconds(self, ts: datetime) -> int:
        off = ts.astimezone(self._tz).utcoffset()
        return int(off.total_seconds()) if off is not None else 0

    def floor(self, ts: datetime, g: Granularity) -> int:
        """Start (epoch s) of the bucket of granularity ``g`` that contains ``ts``."""
        secs = epoch_micros(ts) // 1_000_000
        if g == "d":
            return self._midnight(ts.astimezone(self._tz).date())
        step = NOMINAL_SECONDS[g]
        offset = 0 if self._utc else self._offset_seconds(ts)
        return secs - (secs + offset) % step

    def bucket_ids(self, ts: datetime, micros: int | None = None) -> BucketIds:
        """Minute, hour, day and month bucket of ``ts`` (``micros``: ``epoch_micros(ts)`` if known)."""
        secs = (epoch_micros(ts) if micros is None else micros) // 1_000_000
        if self._utc:
            day_start = secs - secs % 86400
            return BucketIds(secs - secs % 60, secs - secs % 3600, day_start, self._month_of(day_start))
        offset = self._offset_seconds(ts)
        day_start = self._midnight(ts.astimezone(self._tz).date())
        return BucketIds(
            secs - (secs + offset) % 60,
            secs - (secs + offset) % 3600,
            day_start,
            self._month_of(day_start),
        )

    def window_buckets(self, window: Window, as_of: datetime) -> list[int]:
        """Bucket starts covered by ``window`` at ``as_of``, newest first.

        The window covers the bucket containing ``as_of`` and the n-1 before it.
        """
        if window.granularity is None:
            return []
        if window.granularity == "d":
            today = as_of.astimezone(self._tz).date()
            return [self._midnight(today - timedelta(days=k)) for k in range(window.buckets)]
        step = NOMINAL_SECONDS[window.granularity]
        newest = self.floor(as_of, window.granularity)
        return [newest - k * step for k in range(window.buckets)]

    def window_range(self, window: Window, as_of: datetime) -> tuple[int, int]:
        """[start, end) in epoch seconds of the window at ``as_of`` (for tests and docs)."""
        buckets = self.window_buckets(window, as_of)
        if window.granularity == "d":
            end_day = as_of.astimezone(self._tz).date() + timedelta(days=1)
            return buckets[-1], self._midnight(end_day)
        assert window.granularity is not None
        return buckets[-1], buckets[0] + NOMINAL_SECONDS[window.granularity]
