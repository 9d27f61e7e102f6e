"""The store's amount limit, checked by the parser (EventParser.amount_error) for every entry
point that validates without the store: HTTP ingest, `kpi send`, the CSV import."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from kpi_state.events import MAX_AMOUNT, EventParser, Rejection
from kpi_state.settings import Settings

NOW = datetime(2026, 3, 31, 12, 0, tzinfo=UTC)
REFUSED = Rejection("invalid_amount", "amount", "amount above the supported maximum 1e+09")


def event(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": "s1",
        "type": "spend.recorded",
        "occurred_at": "2026-03-01T09:30:00Z",
        "amount": 10.0,
        "category": "marketing",
    }
    return base | over


def amount_error(parser: EventParser, obj: dict[str, Any]) -> Rejection | None:
    parsed = parser.parse_object(obj, NOW)
    assert not isinstance(parsed, Rejection), parsed
    return parser.amount_error(parsed)


def test_amounts_up_to_the_limit_pass_and_above_it_are_refused() -> None:
    parser = EventParser(Settings(currency_rates="USD=0.5"))
    assert MAX_AMOUNT == 1e9
    assert amount_error(parser, event(amount=MAX_AMOUNT)) is None
    assert amount_error(parser, event(amount=MAX_AMOUNT * 1.000001)) == REFUSED
    # In the reporting currency: 1.5e9 USD at 0.5 is 7.5e8, under the limit; 3e9 USD is not.
    assert amount_error(parser, event(amount=1.5e9, currency="USD")) is None
    assert amount_error(parser, event(amount=3e9, currency="USD")) == REFUSED
    won = {"type": "deal.won", "deal_id": "D1", "customer_id": "C1", "rep_id": "r", "amount": 2e9}
    assert amount_error(parser, event(**won)) == REFUSED
    # An event without an amount has nothing to refuse.
    lead = {"event_id": "l1", "type": "lead.created", "occurred_at": "2026-03-01T09:30:00Z", "lead_id": "L1"}
    assert amount_error(parser, lead) is None


def test_kpi_send_refuses_the_same_amounts() -> None:
    """`kpi send` validates each line before it publishes (kpi_app.sender), with the same limit."""
    from kpi_app.sender import _Validator

    validate = _Validator(EventParser(Settings()))
    assert validate(orjson.dumps(event(amount=2e9))) == REFUSED
    assert validate(orjson.dumps(event(amount=MAX_AMOUNT))) == event(amount=MAX_AMOUNT)
