"""CRM events (DESIGN section 2): one frozen model per type, one discriminated union.

Every entry point (replay, the faust agent, HTTP ingest) goes through
``EventParser``: bytes in, a validated ``Event`` or a ``Rejection`` out, never an
exception.  Rules that depend on configuration (stages, currencies, the
future-skew clock) are checked after the model, in the parser.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, NamedTuple, get_args

import orjson
import structlog
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
)
from pydantic_core import PydanticCustomError

from kpi_state.settings import Settings

log = structlog.get_logger(__name__)


class Rejection(NamedTuple):
    """Why an input was refused. ``reason`` is a small closed vocabulary (a metric label)."""

    reason: str
    field: str | None
    detail: str

    def as_dict(self) -> dict[str, str | None]:
        return {"reason": self.reason, "field": self.field, "detail": self.detail}


def _must_be_string(value: Any) -> Any:
    if value is not None and not isinstance(value, str):
        raise PydanticCustomError("timestamp_not_string", "occurred_at must be an RFC 3339 string")
    return value


# Instants the store can place in buckets in any business timezone: year 1 or 9999 overflows the
# local-time arithmetic west or east of UTC. Nothing a CRM sends about sales is from before 1970.
EARLIEST_INSTANT = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_INSTANT = datetime(2200, 1, 1, tzinfo=UTC)


def _must_be_aware(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise PydanticCustomError("naive_timestamp", "timestamp has no UTC offset")
    # Aware comparisons never overflow, whatever the offset (astimezone near year 1 would).
    if not EARLIEST_INSTANT <= value < LATEST_INSTANT:
        raise PydanticCustomError(
            "timestamp_out_of_range", "timestamp must be from 1970-01-01 to 2199-12-31 (UTC)"
        )
    return value


def _dimension(value: str) -> str | None:
    trimmed = value.strip()
    if not trimmed:
        return None
    if len(trimmed) > 64:
        raise PydanticCustomError("too_long", "longer than 64 characters after trimming")
    return trimmed


def _required_dimension(value: str) -> str:
    trimmed = _dimension(value)
    if trimmed is None:
        raise PydanticCustomError("blank_dimension", "required field is empty after trimming")
    return trimmed


def _amount(value: float) -> float:
    if not math.isfinite(value):
        raise PydanticCustomError("not_finite", "amount must be finite")
    if value < 0:
        raise PydanticCustomError("negative_amount", "amount must be >= 0")
    return value


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise PydanticCustomError("number_type", "a JSON number is required")
    return value


Identifier = Annotated[StrictStr, Field(min_length=1, max_length=128)]
Dimension = Annotated[StrictStr, AfterValidator(_dimension)]
RequiredDimension = Annotated[StrictStr, AfterValidator(_required_dimension)]
Amount = Annotated[float, BeforeValidator(_no_bool), Field(strict=True), AfterValidator(_amount)]
Timestamp = Annotated[datetime, BeforeValidator(_must_be_string), AfterValidator(_must_be_aware)]
Currency = Annotated[StrictStr, Field(pattern=r"^[A-Z]{3}$")]
Stage = Annotated[StrictStr, Field(min_length=1, max_length=64)]


class _EventBase(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    event_id: Identifier
    occurred_at: Timestamp


class LeadCreated(_EventBase):
    type: Literal["lead.created"]
    lead_id: Identifier
    source: Dimension | None = None
    segment: Dimension | None = None
    rep_id: Dimension | None = None


class LeadQualified(_EventBase):
    type: Literal["lead.qualified"]
    lead_id: Identifier


class DealCreated(_EventBase):
    type: Literal["deal.created"]
    deal_id: Identifier
    # Optional since contract v2: a CRM often sends the owner and amount in later updates.
    rep_id: Dimension | None = None
    amount: Amount | None = None
    currency: Currency | None = None
    lead_id: Identifier | None = None
    stage: Stage | None = None


class DealStageChanged(_EventBase):
    type: Literal["deal.stage_changed"]
    deal_id: Identifier
    to_stage: Stage
    from_stage: Stage | None = None
    rep_id: Dimension | None = None
    amount: Amount | None = None
    currency: Currency | None = None


class DealWon(_EventBase):
    type: Literal["deal.won"]
    deal_id: Identifier
    customer_id: Identifier
    rep_id: RequiredDimension
    amount: Amount
    currency: Currency | None = None
    lead_id: Identifier | None = None


class DealLost(_EventBase):
    type: Literal["deal.lost"]
    deal_id: Identifier
    rep_id: RequiredDimension
    lead_id: Identifier | None = None
    reason: StrictStr | None = None


class SpendRecorded(_EventBase):
    type: Literal["spend.recorded"]
    amount: Amount
    currency: Currency | None = None
    category: Literal["marketing", "sales"]
    source: Dimension | None = None


class RevenueRecorded(_EventBase):
    type: Literal["revenue.recorded"]
    customer_id: Identifier
    amount: Amount
    currency: Currency | None = None
    gross_margin: Annotated[float, BeforeValidator(_no_bool), Field(strict=True, ge=0, le=1)] | None = None


class CustomerChurned(_EventBase):
    type: Literal["customer.churned"]
    customer_id: Identifier


class SurveyAnswered(_EventBase):
    type: Literal["survey.answered"]
    kind: Literal["nps", "csat"]
    score: StrictInt
    customer_id: Identifier | None = None


# -- contract v2: corrections (DESIGN section 2). Each attribute takes its latest statement.


class LeadUpdated(_EventBase):
    type: Literal["lead.updated"]
    lead_id: Identifier
    source: Dimension | None = None
    segment: Dimension | None = None
    rep_id: Dimension | None = None


class LeadDeleted(_EventBase):
    type: Literal["lead.deleted"]
    lead_id: Identifier


class LeadRestored(_EventBase):
    type: Literal["lead.restored"]
    lead_id: Identifier


class DealUpdated(_EventBase):
    type: Literal["deal.updated"]
    deal_id: Identifier
    amount: Amount | None = None
    currency: Currency | None = None
    rep_id: Dimension | None = None
    lead_id: Identifier | None = None


class DealReopened(_EventBase):
    type: Literal["deal.reopened"]
    deal_id: Identifier
    stage: Stage | None = None
    rep_id: Dimension | None = None


class DealDeleted(_EventBase):
    type: Literal["deal.deleted"]
    deal_id: Identifier


class DealRestored(_EventBase):
    type: Literal["deal.restored"]
    deal_id: Identifier


Event = Annotated[
    LeadCreated
    | LeadQualified
    | DealCreated
    | DealStageChanged
    | DealWon
    | DealLost
    | SpendRecorded
    | RevenueRecorded
    | CustomerChurned
    | SurveyAnswered
    | LeadUpdated
    | LeadDeleted
    | LeadRestored
    | DealUpdated
    | DealReopened
    | DealDeleted
    | DealRestored,
    Field(discriminator="type"),
]
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
MoneyEvent = DealCreated | DealStageChanged | DealWon | SpendRecorded | RevenueRecorded | DealUpdated
MONEY_EVENTS = (DealCreated, DealStageChanged, DealWon, SpendRecorded, RevenueRecorded, DealUpdated)
# Every event type, in one order shared by the tables below.
_MODELS: tuple[type[_EventBase], ...] = (
    LeadCreated,
    LeadQualified,
    DealCreated,
    DealStageChanged,
    DealWon,
    DealLost,
    SpendRecorded,
    RevenueRecorded,
    CustomerChurned,
    SurveyAnswered,
    LeadUpdated,
    LeadDeleted,
    LeadRestored,
    DealUpdated,
    DealReopened,
    DealDeleted,
    DealRestored,
)
EVENT_TYPES: tuple[str, ...] = tuple(get_args(model.model_fields["type"].annotation)[0] for model in _MODELS)
# An update must state at least one attribute: (the fields it may state, in the order named).
_STATED: dict[str, tuple[str, ...]] = {
    "lead.updated": ("source", "segment", "rep_id"),
    "deal.updated": ("amount", "rep_id", "lead_id", "currency"),
}
# Required fields a JSON null stands in for: null is "absent", so it rejects as missing.
_REQUIRED: dict[str, tuple[str, ...]] = {
    # Model field order, so the field named for an event missing several is deterministic.
    name: tuple(f for f, info in model.model_fields.items() if info.is_required() and f != "type")
    for name, model in zip(EVENT_TYPES, _MODELS, strict=True)
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
