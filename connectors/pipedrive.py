"""Pipedrive webhooks (v2, and v1) -> contract-v2 events. Pure and stateless.

A Pipedrive delivery carries the deal's whole current state (``data``), so every delivery states
every attribute again, at the delivery's time (``meta.timestamp``): an older delivery that
arrives late loses to a newer one (the latest statement wins), and a redundant statement
changes nothing. The outcome events are placed at ``won_time`` / ``lost_time``; an open deal
states ``deal.reopened`` at the delivery time (a no-op unless it was closed before, and an
older reopen never outranks a later win). ``deal.created`` (at ``add_time``) is stated by every
delivery under an id of the deal alone, so a change that arrives before its creation still
creates the deal, and never twice.

Event ids: ``meta.id`` (v2; a retry keeps it), plus the position of the event. v1's ``meta.id``
is the record's id, so there the delivery is the record, the action and ``timestamp_micro``.

v2: ``{meta: {action: create|change|delete, entity, entity_id, id, timestamp, ...}, data,
previous}``; v1: ``{meta: {action: added|updated|deleted|merged, object, id, timestamp, ...},
current, previous}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from connectors.common import StageMap, Translation, hashed_id, iso, parse_time, vendor_id

ACTIONS = {"create": "create", "added": "create", "change": "change", "updated": "change",
           "delete": "delete", "deleted": "delete", "merged": "delete"}  # fmt: skip


def _nested_id(value: object) -> str | None:
    """v1 sends related records as objects (``{"value": 7, "name": ...}``) or ids."""
    if isinstance(value, Mapping):
        value = value.get("value", value.get("id"))
    return vendor_id(value)


class PipedriveMapper:
    def __init__(self, stages: StageMap, owners: Mapping[str, str]) -> None:
        self._stages = stages
        self._owners = dict(owners)

    def translate(self, body: object) -> Translation:
        if not isinstance(body, Mapping) or not isinstance(body.get("meta"), Mapping):
            return Translation.refuse("invalid_payload", "meta", "a Pipedrive webhook body has a meta object")
        meta: Mapping[str, Any] = body["meta"]
        entity = meta.get("entity", meta.get("object"))
        action = ACTIONS.get(str(meta.get("action", "")))
        if "object" in meta and "entity" not in meta:
            # v1: meta.id is the record's id, so a delivery is the record, the action and its
            # time (microseconds when given); a retry repeats all three.
            stamp = meta.get("timestamp_micro", meta.get("timestamp"))
            delivery = (
                hashed_id("v1", meta.get("id"), meta.get("action"), stamp) if stamp is not None else None
            )
        else:
            delivery = vendor_id(meta.get("id"))
        when = parse_time(meta.get("timestamp"))
        if entity != "deal":
            return Translation.refuse(
                "unsupported_entity", "meta.entity", f"entity {entity!r} is not translated"
            )
        if action is None or delivery is None or when is None:
            return Translation.refuse("invalid_payload", "meta", "meta needs action, id and timestamp")
        data = body.get("data", body.get("current"))
        previous = body.get("previous")
        record = data if isinstance(data, Mapping) else previous if isinstance(previous, Mapping) else {}
        deal = vendor_id(meta.get("entity_id")) or vendor_id(record.get("id"))
        if deal is None:
            return Translation.refuse("invalid_payload", "meta.entity_id", "no deal id")
        out = Translation()
        at = iso(when)

        def emit(type_: str, occurred_at: str = at, **fields: Any) -> None:
            out.events.append(
                {
                    "event_id": hashed_id("pd", delivery, len(out.events)),
                    "type": type_,
                    "occurred_at": occurred_at,
                    "deal_id": deal,
                    **fields,
                }
            )

        if action == "delete" or (isinstance(data, Mapping) and data.get("is_deleted") is True):
            emit("deal.deleted")
            return out
        if not isinstance(data, Mapping):
            return Translation.refuse(
                "invalid_payload", "data", "a create or change carries the deal in data"
            )
        return self._deal(data, deal, when, out, emit)

    def _deal(
        self, data: Mapping[str, Any], deal: str, when: datetime, out: Translation, emit: Any
    ) -> Translation:
        status = data.get("status")
        if status not in ("open", "won", "lost"):
            return Translation.refuse(
                "invalid_payload", "data.status", f"status {status!r} is not open/won/lost"
            )
        stage: str | None = None
        stage_id = _nested_id(data.get("stage_id"))
        if stage_id is not None:
            stage = self._stages.targets.get(stage_id)
            if stage is None and status == "open":
                return Translation.refuse(
                    "unmapped_stage",
                    "data.stage_id",
                    f"Pipedrive stage_id {stage_id} is not in KPI_PIPEDRIVE_STAGES",
                )
        added = parse_time(data.get("add_time")) or when
        owner = _nested_id(data.get("owner_id", data.get("user_id")))
        rep = self._owners.get(owner, owner) if owner is not None else None
        value = data.get("value")
        amount = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
        if value is not None and amount is None:
            return Translation.refuse("invalid_amount", "data.value", f"value {value!r} is not a number")
        currency = data.get("currency") if isinstance(data.get("currency"), str) else None
        customer = _nested_id(data.get("org_id"))
        lead = _nested_id(data.get("person_id"))

        out.events.append(
            {"event_id": hashed_id("pd-created", deal), "type": "deal.created", "occurred_at": iso(added),
             "deal_id": deal}
        )  # fmt: skip
        updated: dict[str, Any] = {}
        if rep is not None:
            updated["rep_id"] = rep
        if amount is not None:
            updated["amount"] = amount
            if currency:
                updated["currency"] = currency.upper()
        if updated:
            emit("deal.updated", **updated)
        if status == "open":
            if stage is not None:
                emit("deal.stage_changed", to_stage=stage)
            emit("deal.reopened")
            return out
        closed = parse_time(data.get("won_time" if status == "won" else "lost_time")) or when
        fields: dict[str, Any] = {"rep_id": rep or "unassigned"}
        if status == "won":
            fields.update(customer_id=customer or deal, amount=amount or 0.0)
            if currency and amount is not None:
                fields["currency"] = currency.upper()
        if lead is not None:
            fields["lead_id"] = lead
        emit(f"deal.{status}", occurred_at=iso(closed), **fields)
        return out
