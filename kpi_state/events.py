"""Parsing CRM events: bytes in, a validated ``Event`` or a ``Rejection`` out, never an exception.

Every entry point (replay, the faust agent, HTTP ingest) goes through ``EventParser``. The models
themselves live in ``kpi_state.event_models`` and are re-exported here, so ``kpi_state.events``
stays the one import for callers; rules that depend on configuration (stages, currencies, the
future-skew clock) are checked after the model, in the parser.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any, NamedTuple

import orjson
import structlog
from pydantic import ValidationError

from kpi_state.event_models import (
    EVENT_ADAPTER,
    EVENT_MODELS,
    EVENT_TYPES,
    MONEY_EVENTS,
    TYPE_CODES,
    CustomerChurned,
    DealCreated,
    DealDeleted,
    DealLost,
    DealReopened,
    DealRestored,
    DealStageChanged,
    DealUpdated,
    DealWon,
    Event,
    LeadCreated,
    LeadDeleted,
    LeadQualified,
    LeadRestored,
    LeadUpdated,
    MoneyEvent,
    RevenueRecorded,
    SpendRecorded,
    SurveyAnswered,
)
from kpi_state.instants import EARLIEST_INSTANT, LATEST_INSTANT
from kpi_state.settings import Settings

__all__ = [
    "EARLIEST_INSTANT",
    "EVENT_ADAPTER",
    "EVENT_MODELS",
    "EVENT_TYPES",
    "LATEST_INSTANT",
    "MONEY_EVENTS",
    "REJECTION_REASONS",
    "TYPE_CODES",
    "CustomerChurned",
    "DealCreated",
    "DealDeleted",
    "DealLost",
    "DealReopened",
    "DealRestored",
    "DealStageChanged",
    "DealUpdated",
    "DealWon",
    "Event",
    "EventParser",
    "LeadCreated",
    "LeadDeleted",
    "LeadQualified",
    "LeadRestored",
    "LeadUpdated",
    "MoneyEvent",
    "Rejection",
    "RevenueRecorded",
    "SpendRecorded",
    "SurveyAnswered",
    "message_elements",
    "rejection_from",
    "unprocessable",
]

log = structlog.get_logger(__name__)


class Rejection(NamedTuple):
    """Why an input was refused. ``reason`` is a small closed vocabulary (a metric label)."""

    reason: str
    field: str | None
    detail: str

    def as_dict(self) -> dict[str, str | None]:
        return {"reason": self.reason, "field": self.field, "detail": self.detail}


# An update must state at least one attribute: (the fields it may state, in the order named).
_STATED: dict[str, tuple[str, ...]] = {
    "lead.updated": ("source", "segment", "rep_id"),
    "deal.updated": ("amount", "rep_id", "lead_id", "currency"),
}
# Required fields a JSON null stands in for: null is "absent", so it rejects as missing.
_REQUIRED: dict[str, tuple[str, ...]] = {
    # Model field order, so the field named for an event missing several is deterministic.
    name: tuple(f for f, info in model.model_fields.items() if info.is_required() and f != "type")
    for name, model in zip(EVENT_TYPES, EVENT_MODELS, strict=True)
}

# Every reason a Rejection can carry (the closed vocabulary of kpi_events_rejected_total).
REJECTION_REASONS: tuple[str, ...] = (
    "invalid_json",
    "not_an_object",
    "missing_field",
    "unknown_type",
    "invalid_field",
    "invalid_timestamp",
    "naive_timestamp",
    "future_timestamp",
    "negative_amount",
    "invalid_amount",
    "too_long",
    "unknown_stage",
    "unknown_currency",
    "conflict",
    "unprocessable",
)

_REASONS = {
    "missing": "missing_field",
    "blank_dimension": "missing_field",
    "union_tag_not_found": "missing_field",
    "union_tag_invalid": "unknown_type",
    "model_type": "not_an_object",
    "model_attributes_type": "not_an_object",
    "naive_timestamp": "naive_timestamp",
    "negative_amount": "negative_amount",
    "not_finite": "invalid_amount",
    "finite_number": "invalid_amount",
    "too_long": "too_long",
    "string_too_long": "too_long",
    "timestamp_out_of_range": "invalid_timestamp",
}


def unprocessable(exc: BaseException) -> Rejection:
    """The rejection of an event whose handling raised: it becomes a dead letter like bad input."""
    return Rejection("unprocessable", None, f"could not be processed: {exc!r}"[:500])


def rejection_from(error: ValidationError) -> Rejection:
    """The first error of a validation, as (reason, field, detail)."""
    first = error.errors(include_url=False)[0]
    loc = [str(p) for p in first["loc"]]
    # The discriminated union puts the tag first in the location: drop it.
    if loc and loc[0] in EVENT_TYPES:
        loc = loc[1:]
    field = ".".join(loc) or None
    kind = first["type"]
    if kind == "union_tag_not_found":
        field = "type"
    if kind == "union_tag_invalid":
        field = "type"
    reason = _REASONS.get(kind)
    if reason is None:
        if field == "occurred_at":
            reason = "invalid_timestamp"
        elif field == "type":
            reason = "unknown_type"
        else:
            reason = "invalid_field"
    return Rejection(reason, field, first["msg"])


def message_elements(raw: bytes, indices: Iterable[int | None]) -> list[bytes]:
    """The bytes that stand for each element ``index`` of a message (``EventParser.parse_message``):
    the message itself for None, else that array element re-serialised. The message is decoded
    at most once, however many elements are asked for."""
    items: list[Any] | None = None
    out: list[bytes] = []
    for index in indices:
        if index is None:
            out.append(raw)
            continue
        if items is None:
            items = orjson.loads(raw)
        out.append(orjson.dumps(items[index]))
    return out


# Largest amount accepted per event. The store's scripts need every single contribution below
# 2^52 in magnitude (sums of any size stay exact): 1e9 is 1e15 micro-units.
MAX_AMOUNT = 1e9


class EventParser:
    """Validation of raw inputs against DESIGN section 2 and the configuration."""

    def __init__(self, settings: Settings) -> None:
        self._stages = frozenset(settings.stage_names)
        self._currency = settings.currency
        self._rates = settings.rates
        self._skew = settings.max_future_skew

    def parse_object(self, obj: object, now: datetime) -> Event | Rejection:
        if not isinstance(obj, dict):
            return Rejection("not_an_object", None, "an event is a JSON object")
        kind = obj.get("type")
        if isinstance(kind, str) and kind in _REQUIRED:
            for name in _REQUIRED[kind]:
                if obj.get(name) is None:
                    return Rejection("missing_field", name, "required field is absent or null")
        try:
            event = EVENT_ADAPTER.validate_python(obj)
            return self._check_config(event, now)
        except ValidationError as exc:
            return rejection_from(exc)
        except Exception as exc:  # a bug or an input nobody foresaw: refuse the event, never crash
            log.exception("events.unprocessable", error=repr(exc))
            return unprocessable(exc)

    def parse_bytes(self, raw: bytes | str, now: datetime) -> Event | Rejection:
        """One JSON event (a line of a file, a single-event message)."""
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return Rejection("invalid_json", None, str(exc))
        return self.parse_object(obj, now)

    def parse_message(self, raw: bytes, now: datetime) -> Iterator[tuple[int | None, Event | Rejection]]:
        """A topic message: one event or a JSON array of events, each validated on its own.

        Yields ``(index, outcome)``: the position in the array, or None for a single event or a
        message that is not JSON. ``message_elements`` gives the bytes that stand for it (for a
        dead letter), so the valid majority is never re-serialised.
        """
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            yield None, Rejection("invalid_json", None, str(exc))
            return
        if isinstance(obj, list):
            for index, item in enumerate(obj):
                yield index, self.parse_object(item, now)
        else:
            yield None, self.parse_object(obj, now)

    def _check_config(self, event: Event, now: datetime) -> Event | Rejection:
        if event.occurred_at - now > self._skew:
            return Rejection("future_timestamp", "occurred_at", "more than max_future_skew after now")
        if isinstance(event, DealCreated) and event.stage is not None and event.stage not in self._stages:
            return Rejection("unknown_stage", "stage", f"{event.stage!r} is not a configured stage")
        if isinstance(event, DealStageChanged):
            if event.to_stage not in self._stages:
                return Rejection("unknown_stage", "to_stage", f"{event.to_stage!r} is not a configured stage")
            if event.from_stage is not None and event.from_stage not in self._stages:
                return Rejection(
                    "unknown_stage", "from_stage", f"{event.from_stage!r} is not a configured stage"
                )
        stated = _STATED.get(event.type)
        if stated is not None and all(getattr(event, name) is None for name in stated):
            return Rejection(
                "missing_field", "|".join(stated), f"{event.type} states none of {', '.join(stated)}"
            )
        if isinstance(event, DealReopened) and event.stage is not None and event.stage not in self._stages:
            return Rejection("unknown_stage", "stage", f"{event.stage!r} is not a configured stage")
        if isinstance(event, SurveyAnswered):
            low, high = (0, 10) if event.kind == "nps" else (1, 5)
            if not low <= event.score <= high:
                return Rejection("invalid_field", "score", f"{event.kind} score must be {low}-{high}")
        # isinstance, not getattr: a missing attribute takes pydantic's slow __getattr__ path.
        currency = event.currency if isinstance(event, MONEY_EVENTS) else None
        if currency is not None and currency != self._currency and currency not in self._rates:
            return Rejection("unknown_currency", "currency", f"no rate configured for {currency}")
        return event

    def amount_error(self, event: Event) -> Rejection | None:
        """The store's amount limit (``MAX_AMOUNT`` in the reporting currency), separate from
        ``parse_object`` because the worker and replay leave it to the store (KpiStore.prepare)."""
        if not isinstance(event, MONEY_EVENTS) or event.amount is None:
            return None
        value = self.amount_in_reporting(event.amount, event.currency)
        if not math.isfinite(value) or value > MAX_AMOUNT:
            return Rejection("invalid_amount", "amount", f"amount above the supported maximum {MAX_AMOUNT:g}")
        return None

    def amount_in_reporting(self, amount: float, currency: str | None) -> float:
        if currency is None or currency == self._currency:
            return amount
        return amount * self._rates[currency]
