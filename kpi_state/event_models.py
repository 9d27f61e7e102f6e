"""CRM events (DESIGN section 2): one frozen model per type, one discriminated union.

What an event is, declared once: its type name, its fields and their rules, and the two-letter
code the store writes for it (the Lua dispatch table, ``lua/apply_handlers.lua``, has one
handler per code; a unit test holds the two equal). Rules that depend on configuration
(stages, currencies, the future-skew clock) are the parser's (``kpi_state.events``).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    TypeAdapter,
)
from pydantic_core import PydanticCustomError

from kpi_state.instants import EARLIEST_INSTANT, LATEST_INSTANT


def _must_be_string(value: Any) -> Any:
    if value is not None and not isinstance(value, str):
        raise PydanticCustomError("timestamp_not_string", "occurred_at must be an RFC 3339 string")
    return value


# The accepted range of instants: see kpi_state.instants.


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
    """Fields every event carries. ``code`` (per type, not a field): the two letters the store
    writes for the type and ``lua/apply_handlers.lua`` dispatches on (``H.<code>``)."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    code: ClassVar[str]

    event_id: Identifier
    occurred_at: Timestamp


class LeadCreated(_EventBase):
    type: Literal["lead.created"]
    code: ClassVar[str] = "LC"
    lead_id: Identifier
    source: Dimension | None = None
    segment: Dimension | None = None
    rep_id: Dimension | None = None


class LeadQualified(_EventBase):
    type: Literal["lead.qualified"]
    code: ClassVar[str] = "LQ"
    lead_id: Identifier


class DealCreated(_EventBase):
    type: Literal["deal.created"]
    code: ClassVar[str] = "DC"
    deal_id: Identifier
    # Optional since contract v2: a CRM often sends the owner and amount in later updates.
    rep_id: Dimension | None = None
    amount: Amount | None = None
    currency: Currency | None = None
    lead_id: Identifier | None = None
    stage: Stage | None = None


class DealStageChanged(_EventBase):
    type: Literal["deal.stage_changed"]
    code: ClassVar[str] = "DS"
    deal_id: Identifier
    to_stage: Stage
    from_stage: Stage | None = None
    rep_id: Dimension | None = None
    amount: Amount | None = None
    currency: Currency | None = None


class DealWon(_EventBase):
    type: Literal["deal.won"]
    code: ClassVar[str] = "DW"
    deal_id: Identifier
    customer_id: Identifier
    rep_id: RequiredDimension
    amount: Amount
    currency: Currency | None = None
    lead_id: Identifier | None = None


class DealLost(_EventBase):
    type: Literal["deal.lost"]
    code: ClassVar[str] = "DL"
    deal_id: Identifier
    rep_id: RequiredDimension
    lead_id: Identifier | None = None
    reason: StrictStr | None = None


class SpendRecorded(_EventBase):
    type: Literal["spend.recorded"]
    code: ClassVar[str] = "SP"
    amount: Amount
    currency: Currency | None = None
    category: Literal["marketing", "sales"]
    source: Dimension | None = None


class RevenueRecorded(_EventBase):
    type: Literal["revenue.recorded"]
    code: ClassVar[str] = "RR"
    customer_id: Identifier
    amount: Amount
    currency: Currency | None = None
    gross_margin: Annotated[float, BeforeValidator(_no_bool), Field(strict=True, ge=0, le=1)] | None = None


class CustomerChurned(_EventBase):
    type: Literal["customer.churned"]
    code: ClassVar[str] = "CH"
    customer_id: Identifier


class SurveyAnswered(_EventBase):
    type: Literal["survey.answered"]
    code: ClassVar[str] = "SV"
    kind: Literal["nps", "csat"]
    score: StrictInt
    customer_id: Identifier | None = None


# -- contract v2: corrections (DESIGN section 2). Each attribute takes its latest statement.


class LeadUpdated(_EventBase):
    type: Literal["lead.updated"]
    code: ClassVar[str] = "LU"
    lead_id: Identifier
    source: Dimension | None = None
    segment: Dimension | None = None
    rep_id: Dimension | None = None


class LeadDeleted(_EventBase):
    type: Literal["lead.deleted"]
    code: ClassVar[str] = "LX"
    lead_id: Identifier


class LeadRestored(_EventBase):
    type: Literal["lead.restored"]
    code: ClassVar[str] = "LR"
    lead_id: Identifier


class DealUpdated(_EventBase):
    type: Literal["deal.updated"]
    code: ClassVar[str] = "DU"
    deal_id: Identifier
    amount: Amount | None = None
    currency: Currency | None = None
    rep_id: Dimension | None = None
    lead_id: Identifier | None = None


class DealReopened(_EventBase):
    type: Literal["deal.reopened"]
    code: ClassVar[str] = "DO"
    deal_id: Identifier
    stage: Stage | None = None
    rep_id: Dimension | None = None


class DealDeleted(_EventBase):
    type: Literal["deal.deleted"]
    code: ClassVar[str] = "DX"
    deal_id: Identifier


class DealRestored(_EventBase):
    type: Literal["deal.restored"]
    code: ClassVar[str] = "DR"
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
# Every event type, in one order shared by the tables derived from it.
EVENT_MODELS: tuple[type[_EventBase], ...] = (
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
EVENT_TYPES: tuple[str, ...] = tuple(
    get_args(model.model_fields["type"].annotation)[0] for model in EVENT_MODELS
)
# The store's code for each event type (see ``_EventBase``).
TYPE_CODES: dict[str, str] = {name: model.code for name, model in zip(EVENT_TYPES, EVENT_MODELS, strict=True)}
