"""Validation rules of DESIGN section 2: every rejection names its field and reason."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from kpi_state.events import (
    DealCreated,
    EventParser,
    LeadCreated,
    Rejection,
    SurveyAnswered,
    message_elements,
)
from kpi_state.settings import Settings

NOW = datetime(2026, 3, 31, 12, 0, tzinfo=UTC)


@pytest.fixture
def parser() -> EventParser:
    return EventParser(Settings(currency_rates="USD=0.5"))


def lead(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": "e1",
        "type": "lead.created",
        "occurred_at": "2026-03-01T09:30:00Z",
        "lead_id": "L1",
        "source": "web",
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not ...}


def deal(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": "e2",
        "type": "deal.created",
        "occurred_at": "2026-03-01T09:30:00+02:00",
        "deal_id": "D1",
        "rep_id": "alice",
        "amount": 100,
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not ...}


def test_valid_lead_trims_dimensions_and_ignores_unknown_fields(parser: EventParser) -> None:
    event = parser.parse_object(lead(source="  web ", segment="   ", extra={"x": 1}), NOW)
    assert isinstance(event, LeadCreated)
    assert event.source == "web"
    assert event.segment is None  # empty after trimming counts as absent


@pytest.mark.parametrize(
    ("obj", "reason", "field"),
    [
        (lead(occurred_at="2026-03-01T09:30:00"), "naive_timestamp", "occurred_at"),
        (lead(occurred_at="yesterday"), "invalid_timestamp", "occurred_at"),
        (lead(occurred_at=1700000000), "invalid_timestamp", "occurred_at"),
        (lead(occurred_at="2026-03-31T13:00:01Z"), "future_timestamp", "occurred_at"),
        (lead(lead_id=None), "missing_field", "lead_id"),
        (lead(lead_id=...), "missing_field", "lead_id"),
        (lead(lead_id=""), "invalid_field", "lead_id"),
        (lead(lead_id="x" * 129), "too_long", "lead_id"),
        (lead(lead_id=12), "invalid_field", "lead_id"),
        (lead(source="s" * 65), "too_long", "source"),
        (lead(source=7), "invalid_field", "source"),
        (lead(type="lead.merged"), "unknown_type", "type"),
        (lead(type=...), "missing_field", "type"),
        (lead(event_id=...), "missing_field", "event_id"),
        (deal(amount=-1), "negative_amount", "amount"),
        (deal(amount="100"), "invalid_field", "amount"),
        (deal(amount=True), "invalid_field", "amount"),
        (deal(type="deal.lost", rep_id=None), "missing_field", "rep_id"),
        (deal(type="deal.lost", rep_id="   "), "missing_field", "rep_id"),
        (deal(stage="won"), "unknown_stage", "stage"),
        (deal(currency="JPY"), "unknown_currency", "currency"),
        (deal(currency="usd"), "invalid_field", "currency"),
        (
            {
                "event_id": "s",
                "type": "survey.answered",
                "occurred_at": "2026-03-01T00:00:00Z",
                "kind": "nps",
                "score": 11,
            },
            "invalid_field",
            "score",
        ),
        (
            {
                "event_id": "s",
                "type": "survey.answered",
                "occurred_at": "2026-03-01T00:00:00Z",
                "kind": "csat",
                "score": 4.0,
            },
            "invalid_field",
            "score",
        ),
        (
            {
                "event_id": "s",
                "type": "deal.stage_changed",
                "occurred_at": "2026-03-01T00:00:00Z",
                "deal_id": "D",
                "to_stage": "closing",
            },
            "unknown_stage",
            "to_stage",
        ),
        (
            {
                "event_id": "s",
                "type": "spend.recorded",
                "occurred_at": "2026-03-01T00:00:00Z",
                "amount": 5,
                "category": "travel",
            },
            "invalid_field",
            "category",
        ),
        (
            {
                "event_id": "s",
                "type": "revenue.recorded",
                "occurred_at": "2026-03-01T00:00:00Z",
                "customer_id": "C",
                "amount": 5,
                "gross_margin": 1.5,
            },
            "invalid_field",
            "gross_margin",
        ),
        ([1, 2], "not_an_object", None),
    ],
)
def test_rejections_name_field_and_reason(
    parser: EventParser, obj: Any, reason: str, field: str | None
) -> None:
    result = parser.parse_object(obj, NOW)
    assert isinstance(result, Rejection), result
    assert (result.reason, result.field) == (reason, field)


def test_dimension_required_but_blank_is_missing(parser: EventParser) -> None:
    # rep_id is required on deal.lost: "   " is absent after trimming.
    result = parser.parse_object(deal(type="deal.lost", rep_id="   "), NOW)
    assert isinstance(result, Rejection)


def test_deal_created_needs_no_owner_nor_amount(parser: EventParser) -> None:
    # Contract v2: a CRM often sends the owner and the amount in later updates.
    result = parser.parse_object(deal(rep_id=None, amount=...), NOW)
    assert isinstance(result, DealCreated)
    assert (result.rep_id, result.amount) == (None, None)


def test_invalid_json_and_nan(parser: EventParser) -> None:
    bad = parser.parse_bytes(b'{"event_id": ', NOW)
    assert isinstance(bad, Rejection) and bad.reason == "invalid_json"
    nan = parser.parse_bytes(
        b'{"event_id":"e","type":"spend.recorded","occurred_at":"2026-03-01T00:00:00Z",'
        b'"amount":NaN,"category":"sales"}',
        NOW,
    )
    assert isinstance(nan, Rejection) and nan.reason == "invalid_json"


def test_reporting_currency_and_rates(parser: EventParser) -> None:
    event = parser.parse_object(deal(currency="USD", amount=10), NOW)
    assert isinstance(event, DealCreated)
    assert parser.amount_in_reporting(event.amount, event.currency) == 5.0
    assert parser.amount_in_reporting(10.0, "EUR") == 10.0


def test_message_batches_validate_each_event(parser: EventParser) -> None:
    raw = orjson.dumps([lead(), lead(event_id="e9", lead_id=None), "nope"])
    results = list(parser.parse_message(raw, NOW))
    assert [type(r).__name__ for _, r in results] == ["LeadCreated", "Rejection", "Rejection"]
    assert [i for i, _ in results] == [0, 1, 2]
    nope, first = message_elements(raw, [2, 0])
    assert orjson.loads(nope) == "nope"
    assert orjson.loads(first) == lead()
    single_raw = orjson.dumps(lead())
    single = list(parser.parse_message(single_raw, NOW))
    assert len(single) == 1 and single[0][0] is None and isinstance(single[0][1], LeadCreated)
    assert message_elements(single_raw, [None]) == [single_raw]
    broken = list(parser.parse_message(b"[{", NOW))
    assert len(broken) == 1 and broken[0][0] is None
    assert isinstance(broken[0][1], Rejection) and broken[0][1].reason == "invalid_json"


def test_survey_scores(parser: EventParser) -> None:
    ok = parser.parse_object(
        {
            "event_id": "s",
            "type": "survey.answered",
            "occurred_at": "2026-03-01T00:00:00Z",
            "kind": "nps",
            "score": 0,
            "customer_id": None,
        },
        NOW,
    )
    assert isinstance(ok, SurveyAnswered) and ok.score == 0


def test_every_reason_is_in_the_closed_vocabulary() -> None:
    from kpi_state import events

    assert set(events._REASONS.values()) <= set(events.REJECTION_REASONS)
    assert {"invalid_timestamp", "invalid_field", "conflict", "future_timestamp"} <= set(
        events.REJECTION_REASONS
    )


@pytest.mark.parametrize(
    "stamp",
    [
        "0001-01-01T00:00:00Z",
        "0001-01-01T00:00:00+05:00",  # converting it to UTC would overflow
        "1969-12-31T23:59:59Z",
        "2200-01-01T00:00:00Z",
        "9999-12-31T23:59:59-08:00",  # converting it to UTC would overflow
    ],
)
def test_timestamps_out_of_range_are_rejected(parser: EventParser, stamp: str) -> None:
    """Year 1 or 9999 passed validation once and then overflowed the bucket arithmetic of a business
    timezone west of UTC, stopping the worker for good."""
    outcome = parser.parse_object(lead(occurred_at=stamp), NOW)
    assert outcome == Rejection(
        "invalid_timestamp", "occurred_at", "timestamp must be from 1970-01-01 to 2199-12-31 (UTC)"
    )


@pytest.mark.parametrize("stamp", ["1970-01-01T00:00:00Z", "1970-01-01T08:00:00+08:00"])
def test_the_earliest_instant_is_accepted(parser: EventParser, stamp: str) -> None:
    assert isinstance(parser.parse_object(lead(occurred_at=stamp), NOW), LeadCreated)


def test_an_unforeseen_error_rejects_the_event_instead_of_raising() -> None:
    class Broken(EventParser):
        def _check_config(self, event: Any, now: datetime) -> Any:
            raise OverflowError("date value out of range")

    outcome = Broken(Settings()).parse_object(lead(), NOW)
    assert isinstance(outcome, Rejection) and outcome.reason == "unprocessable"
    assert "OverflowError" in outcome.detail
