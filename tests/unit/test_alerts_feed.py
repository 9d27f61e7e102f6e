"""What the wall's banner makes of Alertmanager's API v2 answer (kpi_app.alerts_feed), no server."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from kpi_app.alerts_feed import banner_alerts


def _alert(name: str, starts: str, **labels: str) -> dict[str, object]:
    return {
        "labels": {"alertname": name, "area": "sales", "severity": "warning", **labels},
        "annotations": {"summary": f"{name} summary", "description": "d", "look_at": "l"},
        "startsAt": starts,
        "endsAt": "2026-11-30T12:00:00Z",
        "fingerprint": "abc",
        "status": {"state": "active", "silencedBy": [], "inhibitedBy": []},
        "receivers": [{"name": "null"}],
        "updatedAt": "2026-11-30T10:00:00Z",
    }


def test_rows_say_where_and_since_oldest_first() -> None:
    rows = banner_alerts(
        [
            _alert("SalesWinRateDropped", "2026-11-30T10:00:00Z", scope="segment", segment="smb"),
            _alert(
                "SalesStageConversionDropped", "2026-11-30T08:00:00.123Z", scope="total", stage="proposal"
            ),
            _alert(
                "SalesQualificationRateDropped", "2026-11-30T09:00:00+01:00", scope="source", source="web"
            ),
        ]
    )
    assert [(r.alertname, r.where) for r in rows] == [
        ("SalesQualificationRateDropped", "source web"),
        ("SalesStageConversionDropped", "total, stage proposal"),
        ("SalesWinRateDropped", "segment smb"),
    ]
    assert rows[0].starts_at == datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
    assert rows[0].summary == "SalesQualificationRateDropped summary"


def test_only_sales_alerts_and_a_summary_defaults_to_the_name() -> None:
    other = _alert("KpiNoEventsReceived", "2026-11-30T10:00:00Z")
    other["labels"] = {"alertname": "KpiNoEventsReceived", "area": "pipeline"}
    bare = {
        "labels": {"alertname": "SalesTargetBehindPace", "area": "sales"},
        "startsAt": "2026-11-30T10:00:00Z",
    }
    (row,) = banner_alerts([other, bare])
    assert (row.alertname, row.summary, row.where, row.scope) == (
        "SalesTargetBehindPace",
        "SalesTargetBehindPace",
        "total",
        "",
    )


@pytest.mark.parametrize(
    "raw", [{"alerts": []}, [{"labels": {"area": "sales"}}], [{"labels": 1, "startsAt": "x"}]]
)
def test_an_answer_that_is_not_a_list_of_alerts_is_refused(raw: object) -> None:
    with pytest.raises(ValidationError):
        banner_alerts(raw)
