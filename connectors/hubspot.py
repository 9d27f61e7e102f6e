"""HubSpot webhooks v3 -> contract-v2 events. Pure: the record state is read and merged by the caller.

HubSpot sends one property per notification, and a creation without properties, so the deal
events that need several attributes (a win needs owner, amount, customer) are built from the
last known state of the deal (``DealState``: each attribute's latest value by ``occurredAt``,
kept in Redis by ``streams.hooks_worker``). The caller first merges what a notification states
(``state_updates``), then asks for its events (``translate``) with the merged state.

Event ids: HubSpot's ``eventId`` is not unique on its own, so each id hashes ``eventId``,
``subscriptionType``, ``objectId``, ``propertyName`` and ``occurredAt`` (never
``attemptNumber``): a retry is a duplicate. A deal's ``deal.created`` id hashes the deal id
alone (a second ``deal.created`` under another id would be a conflict).

Order: an owner or amount statement is placed no earlier than the deal's latest known outcome,
when it is the deal's latest value: a win applied before an earlier amount change arrived must
not keep the stale amount it carried.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from connectors.common import StageMap, Translation, hashed_id, iso, vendor_id
from connectors.csv_mapping import RowError, parse_amount

# attribute -> (value, occurredAt in epoch ms)
DealState = Mapping[str, tuple[str, int]]
QUALIFIED_LIFECYCLES = frozenset({"salesqualifiedlead", "opportunity", "customer"})
DEAL_PROPERTIES = {"amount": "amount", "hubspot_owner_id": "owner", "deal_currency_code": "currency"}
CONTACT_PROPERTIES = frozenset({"hubspot_owner_id", "hs_analytics_source", "lifecyclestage"})


class HubSpotEvent(BaseModel):
    """One element of a v3 webhook body (only the fields used; others are ignored)."""

    model_config = ConfigDict(extra="ignore")

    eventId: str
    subscriptionType: str
    objectId: str | None = None
    occurredAt: int
    portalId: str | None = None
    propertyName: str | None = None
    propertyValue: str | None = None
    # merges
    primaryObjectId: str | None = None
    mergedObjectIds: list[str] = []
    newObjectId: str | None = None
    # association changes
    associationType: str | None = None
    fromObjectId: str | None = None
    toObjectId: str | None = None
    associationRemoved: bool = False

    @field_validator("eventId", "objectId", "portalId", "primaryObjectId", "newObjectId",
                     "fromObjectId", "toObjectId", mode="before")  # fmt: skip
    @classmethod
    def _ids(cls, value: object) -> object:
        return vendor_id(value) if value is not None else None

    @field_validator("mergedObjectIds", mode="before")
    @classmethod
    def _id_list(cls, value: object) -> object:
        return [vendor_id(v) for v in value] if isinstance(value, list) else value

    @field_validator("propertyValue", mode="before")
    @classmethod
    def _text(cls, value: object) -> object:
        return None if value is None else str(value)

    @property
    def object_type(self) -> str:
        return self.subscriptionType.partition(".")[0]

    @property
    def change(self) -> str:
        return self.subscriptionType.partition(".")[2]


def parse_event(item: object) -> HubSpotEvent | Translation:
    try:
        return HubSpotEvent.model_validate(item)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or None
        return Translation.refuse("invalid_payload", where, first["msg"])


class HubSpotMapper:
    def __init__(self, stages: StageMap, owners: Mapping[str, str], first_stage: str) -> None:
        self._stages = stages
        self._owners = dict(owners)
        self._first_stage = first_stage

    def rep(self, owner_id: str) -> str:
        return self._owners.get(owner_id, owner_id)

    @staticmethod
    def deal_key(event: HubSpotEvent) -> str | None:
        """The deal whose state the notification reads or changes (None: no deal state)."""
        if event.object_type != "deal":
            return None
        if event.change == "associationChange":
            return _association(event)[0]
        return event.objectId

    def state_updates(self, event: HubSpotEvent) -> dict[str, str]:
        """What the notification states about its deal (merged if newer than what is known)."""
        if event.object_type != "deal":
            return {}
        if event.change == "propertyChange" and event.propertyName is not None:
            if event.propertyName == "dealstage":
                target = self._stages.targets.get(event.propertyValue or "")
                if target is None:
                    return {}
                return {"outcome": target if target in ("won", "lost") else "open"}
            name = DEAL_PROPERTIES.get(event.propertyName)
            if name is not None and event.propertyValue is not None:
                return {name: event.propertyValue}
        if event.change == "associationChange":
            _, kind, other = _association(event)
            if kind in ("company", "contact") and other is not None:
                return {kind: "" if event.associationRemoved else other}
        return {}

    def translate(self, event: HubSpotEvent, state: DealState) -> Translation:
        at = iso(datetime.fromtimestamp(event.occurredAt / 1000, UTC))
        base = hashed_id(
            "hs", event.eventId, event.subscriptionType, event.objectId, event.propertyName, event.occurredAt
        )
        kind, change, obj = event.object_type, event.change, event.objectId
        out = Translation()

        def emit(type_: str, **fields: Any) -> None:
            out.events.append(
                {"event_id": f"{base}.{len(out.events)}", "type": type_, "occurred_at": at, **fields}
            )

        if kind == "deal" and change == "associationChange":
            deal, other_kind, other = _association(event)
            if deal is None or other is None:
                return Translation.refuse("invalid_payload", "fromObjectId", "an association without ids")
            if other_kind == "contact" and not event.associationRemoved:
                emit("deal.updated", deal_id=deal, lead_id=other)
            return out  # a company is the customer of the deal's next outcome (state only)
        if obj is None:
            return Translation.refuse("invalid_payload", "objectId", "no objectId")
        if change == "merge":
            gone = [
                m for m in event.mergedObjectIds if m and m not in (event.newObjectId, event.primaryObjectId)
            ]
            if kind in ("deal", "contact"):
                for record in gone:
                    emit(f"{'deal' if kind == 'deal' else 'lead'}.deleted", **_ident(kind, record))
                return out
        if kind == "deal":
            return self._deal(event, obj, state, out, emit)
        if kind == "contact":
            return self._contact(event, obj, out, emit)
        return Translation.refuse(
            "unsupported_subscription", "subscriptionType", f"{event.subscriptionType} is not translated"
        )

    def _deal(
        self, event: HubSpotEvent, deal: str, state: DealState, out: Translation, emit: Any
    ) -> Translation:
        change = event.change
        if change == "creation":
            out.events.append(
                {
                    "event_id": hashed_id("hs-created", deal),
                    "type": "deal.created",
                    "occurred_at": out_time(event),
                    "deal_id": deal,
                }
            )
            return out
        if change in ("deletion", "restore"):
            emit("deal.deleted" if change == "deletion" else "deal.restored", deal_id=deal)
            return out
        if change != "propertyChange" or event.propertyName is None:
            return Translation.refuse(
                "unsupported_subscription", "subscriptionType", f"{event.subscriptionType} is not translated"
            )
        name, value = event.propertyName, event.propertyValue or ""
        if name == "dealstage":
            target = self._stages.targets.get(value)
            if target is None:
                return Translation.refuse(
                    "unmapped_stage",
                    "propertyValue",
                    f"HubSpot dealstage {value!r} is not in KPI_HUBSPOT_STAGES",
                )
            owner = _value(state, "owner")
            rep = self.rep(owner) if owner else "unassigned"
            if target == "won":
                amount = _amount(_value(state, "amount")) or 0.0
                fields: dict[str, Any] = {"deal_id": deal, "rep_id": rep, "amount": amount}
                fields["customer_id"] = _value(state, "company") or deal
                if _value(state, "currency"):
                    fields["currency"] = _value(state, "currency")
                if _value(state, "contact"):
                    fields["lead_id"] = _value(state, "contact")
                emit("deal.won", **fields)
            elif target == "lost":
                emit("deal.lost", deal_id=deal, rep_id=rep)
            else:
                emit("deal.stage_changed", deal_id=deal, to_stage=target)
                emit("deal.reopened", deal_id=deal)  # open again if it was closed earlier
            return out
        attribute = DEAL_PROPERTIES.get(name)
        if attribute is None:
            return Translation.refuse(
                "unmapped_property", "propertyName", f"deal property {name!r} is not translated"
            )
        if not value.strip():
            # A cleared amount, owner or currency: contract v2 has no statement for "none".
            return out
        if attribute == "amount":
            new_amount = _amount(value)
            if new_amount is None:
                return Translation.refuse(
                    "invalid_amount", "propertyValue", f"amount {value!r} is not a number"
                )
            stated: dict[str, Any] = {"amount": new_amount}
            if _value(state, "currency"):
                stated["currency"] = _value(state, "currency")
        elif attribute == "owner":
            stated = {"rep_id": self.rep(value)}
        else:
            stated = {"currency": value.upper()}
        emit("deal.updated", deal_id=deal, **stated)
        # The deal's latest value of this attribute must outrank the outcome event that carried an
        # older one: place it at the outcome's time when that is later.
        latest = state.get(attribute)
        outcome = state.get("outcome")
        if (
            latest is not None
            and latest[1] == event.occurredAt
            and outcome is not None
            and outcome[1] > latest[1]
        ):
            # 1 ms later: at the same instant the tie would go by event id, i.e. by chance.
            out.events[-1]["occurred_at"] = iso(datetime.fromtimestamp((outcome[1] + 1) / 1000, UTC))
        return out

    def _contact(self, event: HubSpotEvent, contact: str, out: Translation, emit: Any) -> Translation:
        change = event.change
        if change == "creation":
            emit("lead.created", lead_id=contact)
            return out
        if change in ("deletion", "restore"):
            emit("lead.deleted" if change == "deletion" else "lead.restored", lead_id=contact)
            return out
        if change != "propertyChange" or event.propertyName not in CONTACT_PROPERTIES:
            return Translation.refuse(
                "unmapped_property",
                "propertyName",
                f"contact {event.propertyName or change!r} is not translated",
            )
        value = (event.propertyValue or "").strip()
        if not value:
            return out
        if event.propertyName == "hubspot_owner_id":
            emit("lead.updated", lead_id=contact, rep_id=self.rep(value))
        elif event.propertyName == "hs_analytics_source":
            emit("lead.updated", lead_id=contact, source=value.lower())
        elif value.lower() in QUALIFIED_LIFECYCLES:
            emit("lead.qualified", lead_id=contact)
        return out


def out_time(event: HubSpotEvent) -> str:
    return iso(datetime.fromtimestamp(event.occurredAt / 1000, UTC))


def _association(event: HubSpotEvent) -> tuple[str | None, str | None, str | None]:
    """(deal id, the other side's kind, the other side's id) of a deal association change."""
    left, _, right = (event.associationType or "").lower().partition("_to_")
    if left == "deal":
        return event.fromObjectId, right, event.toObjectId
    if right == "deal":
        return event.toObjectId, left, event.fromObjectId
    return None, None, None


def _ident(kind: str, record: str) -> dict[str, str]:
    return {"deal_id": record} if kind == "deal" else {"lead_id": record}


def _value(state: DealState, name: str) -> str:
    item = state.get(name)
    return item[0] if item is not None else ""


def _amount(text: str) -> float | None:
    if not text:
        return None
    try:
        return parse_amount(text)
    except RowError:
        return None
