"""The one parser of a user-given instant (``--as-of``, ``?as_of=``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from kpi_state.instants import parse_instant


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-31T23:59:59Z", datetime(2026, 3, 31, 23, 59, 59, tzinfo=UTC)),
        ("2026-03-31T23:59:59+02:00", datetime(2026, 3, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=2)))),
        ("1970-01-01T00:00:00Z", datetime(1970, 1, 1, tzinfo=UTC)),
    ],
)
def test_accepts_an_aware_instant_in_range(text: str, expected: datetime) -> None:
    assert parse_instant(text, "as_of") == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("yesterday", "as_of is not an RFC 3339 timestamp: 'yesterday'"),
        ("2026-03-31T23:59:59", "as_of needs an offset"),
        ("2200-01-01T00:00:00Z", "as_of must be from 1970-01-01T00:00:00Z up to 2200-01-01T00:00:00Z"),
        ("0001-01-01T00:00:00+05:00", "as_of must be from"),  # converting it to UTC would overflow
        ("9999-12-31T23:59:59-08:00", "as_of must be from"),
    ],
)
def test_refuses_naming_the_parameter(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        parse_instant(text, "as_of")
