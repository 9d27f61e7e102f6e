"""Instants the system accepts, and the one parser of a user-given RFC 3339 instant.

Contract: an instant carries a UTC offset and lies in [1970-01-01, 2200-01-01) UTC, so the store
can place it in buckets in any business timezone (year 1 or 9999 overflows the local-time
arithmetic west or east of UTC; nothing a CRM sends about sales is from before 1970). Event
timestamps are checked by the event models (``kpi_state.event_models``); ``--as-of`` and
``?as_of=`` by ``parse_instant``.
"""

from __future__ import annotations

from datetime import UTC, datetime

EARLIEST_INSTANT = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_INSTANT = datetime(2200, 1, 1, tzinfo=UTC)


def parse_instant(text: str, name: str) -> datetime:
    """``text`` as an aware instant in range; ValueError naming ``name`` (the option or query
    parameter) otherwise. The text is taken as given: callers decide about blanks."""
    try:
        ts = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"{name} is not an RFC 3339 timestamp: {text!r}") from exc
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError(f"{name} needs an offset (e.g. 2026-03-31T23:59:59Z)")
    if not EARLIEST_INSTANT <= ts < LATEST_INSTANT:  # aware comparisons never overflow
        raise ValueError(f"{name} must be from 1970-01-01T00:00:00Z up to 2200-01-01T00:00:00Z")
    return ts
