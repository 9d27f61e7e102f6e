"""HubSpot (webhooks v3) and Pipedrive (webhooks v2/v1) notifications -> events. Pure: no Redis.

Payloads are shaped as the vendors document them: HubSpot's v3 body is an array of objects with
eventId, subscriptionId, portalId, appId, occurredAt (epoch ms), subscriptionType, attemptNumber,
objectId, changeSource, propertyName/propertyValue; Pipedrive v2 is {meta, data, previous}.
"""

from __future__ import annotations

from typing import Any

import pytest

from connectors.common import StageMap, Translation, parse_time, vendor_id
from connectors.hubspot import HubSpotEvent, HubSpotMapper, parse_event
from connectors.pipedrive import PipedriveMapper

STAGES = ("prospecting", "qualification", "proposal", "negotiation")
HS = HubSpotMapper(
    StageMap.parse("appointmentscheduled=prospecting,contractsent=proposal,closedwon=won,closedlost=lost",
                   STAGES, "KPI_HUBSPOT_STAGES"),
    {"101": "alice"},
    "prospecting",
)  # fmt: skip
PD = PipedriveMapper(StageMap.parse("1=prospecting,3=proposal", STAGES, "KPI_PIPEDRIVE_STAGES"), {"7": "bob"})
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z in ms


def hs(
    subscription: str, object_id: int = 5001, at: int = T0, event_id: int = 1, **extra: Any
) -> dict[str, Any]:
    return {
        "eventId": event_id,
        "subscriptionId": 2291,
        "portalId": 62515,
        "appId": 1160452,
        "occurredAt": at,
        "subscriptionType": subscription,
        "attemptNumber": 0,
        "objectId": object_id,
        "changeSource": "CRM_UI",
        **extra,
    }


def prop(name: str, value: str, **kw: Any) -> dict[str, Any]:
    return hs("deal.propertyChange", propertyName=name, propertyValue=value, **kw)


def run(item: dict[str, Any], state: dict[str, tuple[str, int]] | None = None) -> Translation:
    event = parse_event(item)
    assert isinstance(event, HubSpotEvent), event
    return HS.translate(event, state or {})


def test_deal_creation_is_created_under_an_id_of_the_deal() -> None:
    out = run(hs("deal.creation"))
    assert [e["type"] for e in out.events] == ["deal.created"]
    created = out.events[0]
    assert (created["deal_id"], created["occurred_at"]) == ("5001", "2026-01-01T00:00:00Z")
    assert run(hs("deal.creation", event_id=99)).events[0]["event_id"] == created["event_id"]


def test_retry_is_the_same_event_and_attempt_number_is_ignored() -> None:
    first = run(prop("amount", "1500"))
    retry = run({**prop("amount", "1500"), "attemptNumber": 3})
    assert first.events == retry.events
    # eventId alone is not unique: another property under the same eventId is another event.
    other = run(prop("hubspot_owner_id", "101"))
    assert other.events[0]["event_id"] != first.events[0]["event_id"]


def test_won_uses_the_last_known_state() -> None:
    state = {"amount": ("1500.5", T0), "owner": ("101", T0), "company": ("9001", T0), "contact": ("7", T0)}
    out = run(prop("dealstage", "closedwon", at=T0 + 10), state)
    (won,) = out.events
    assert won["type"] == "deal.won"
    assert (won["rep_id"], won["amount"], won["customer_id"], won["lead_id"]) == (
        "alice",
        1500.5,
        "9001",
        "7",
    )
    lost = run(prop("dealstage", "closedlost"), {"owner": ("555", T0)}).events[0]
    assert (lost["type"], lost["rep_id"]) == ("deal.lost", "555")  # an unmapped owner id is the rep as is
    bare = run(prop("dealstage", "closedwon"), {}).events[0]
    assert (bare["rep_id"], bare["amount"], bare["customer_id"]) == ("unassigned", 0.0, "5001")


def test_open_stage_moves_and_reopens() -> None:
    out = run(prop("dealstage", "contractsent"))
    assert [(e["type"], e.get("to_stage")) for e in out.events] == [
        ("deal.stage_changed", "proposal"),
        ("deal.reopened", None),
    ]
    assert len({e["event_id"] for e in out.events}) == 2


def test_cleared_values_state_nothing() -> None:
    for name in ("amount", "hubspot_owner_id", "deal_currency_code"):
        out = run(prop(name, ""))
        assert out.reason is None and out.events == [], name


def test_unmapped_stage_is_refused_naming_the_stage() -> None:
    out = run(prop("dealstage", "1234567"))
    assert (out.reason, out.field_name) == ("unmapped_stage", "propertyValue")
    assert "1234567" in out.detail and not out.events


def test_amount_older_than_the_win_is_placed_after_it() -> None:
    """An amount change that happened before the win but arrives after it must still count."""
    state = {"amount": ("900", T0), "outcome": ("won", T0 + 60_000)}
    (update,) = run(prop("amount", "900", at=T0), state).events
    assert update["occurred_at"] == "2026-01-01T00:01:00.001000Z"
    # Not the latest amount any more (a newer one is known): it stays at its own time and loses.
    state = {"amount": ("950", T0 + 5), "outcome": ("won", T0 + 60_000)}
    (old,) = run(prop("amount", "900", at=T0), state).events
    assert old["occurred_at"] == "2026-01-01T00:00:00Z"


def test_state_updates() -> None:
    def updates(item: dict[str, Any]) -> dict[str, str]:
        event = parse_event(item)
        assert isinstance(event, HubSpotEvent)
        return HS.state_updates(event)

    assert updates(prop("amount", "10")) == {"amount": "10"}
    assert updates(prop("dealstage", "closedwon")) == {"outcome": "won"}
    assert updates(prop("dealstage", "contractsent")) == {"outcome": "open"}
    assert updates(prop("dealstage", "nope")) == {}
    assoc = hs(
        "deal.associationChange",
        associationType="DEAL_TO_COMPANY",
        fromObjectId=5001,
        toObjectId=9001,
        associationRemoved=False,
        isPrimaryAssociation=True,
    )
    assert updates(assoc) == {"company": "9001"}
    assert updates({**assoc, "associationRemoved": True}) == {"company": ""}


def test_deletion_restore_and_merge() -> None:
    assert run(hs("deal.deletion")).events[0]["type"] == "deal.deleted"
    assert run(hs("deal.restore")).events[0]["type"] == "deal.restored"
    merge = hs("deal.merge", primaryObjectId=5001, mergedObjectIds=[5001, 5002, 5003], newObjectId=5001,
               numberOfPropertiesMoved=4)  # fmt: skip
    out = run(merge)
    assert [(e["type"], e["deal_id"]) for e in out.events] == [
        ("deal.deleted", "5002"),
        ("deal.deleted", "5003"),
    ]
    contact_merge = hs("contact.merge", primaryObjectId=1, mergedObjectIds=[2], newObjectId=1)
    assert [(e["type"], e["lead_id"]) for e in run(contact_merge).events] == [("lead.deleted", "2")]


def test_contacts_become_leads() -> None:
    assert run(hs("contact.creation", object_id=7)).events[0] == {
        "event_id": run(hs("contact.creation", object_id=7)).events[0]["event_id"],
        "type": "lead.created",
        "occurred_at": "2026-01-01T00:00:00Z",
        "lead_id": "7",
    }
    change = hs(
        "contact.propertyChange", object_id=7, propertyName="hs_analytics_source", propertyValue="PAID_SEARCH"
    )
    assert run(change).events[0]["source"] == "paid_search"
    owner = hs("contact.propertyChange", object_id=7, propertyName="hubspot_owner_id", propertyValue="101")
    assert run(owner).events[0]["rep_id"] == "alice"
    sql = hs(
        "contact.propertyChange",
        object_id=7,
        propertyName="lifecyclestage",
        propertyValue="salesqualifiedlead",
    )
    assert run(sql).events[0]["type"] == "lead.qualified"
    assert run({**sql, "propertyValue": "subscriber"}).events == []
    assert run(hs("contact.deletion", object_id=7)).events[0]["type"] == "lead.deleted"
    assoc = hs("deal.associationChange", associationType="CONTACT_TO_DEAL", fromObjectId=7, toObjectId=5001)
    assert run(assoc).events[0] == {
        **run(assoc).events[0],
        "type": "deal.updated",
        "deal_id": "5001",
        "lead_id": "7",
    }


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ({"subscriptionType": "deal.creation"}, "invalid_payload"),
        (hs("deal.creation", at="yesterday"), "invalid_payload"),  # type: ignore[arg-type]
        (prop("amount", "lots"), "invalid_amount"),
        (prop("closedate", "2026-01-01"), "unmapped_property"),
        (hs("company.creation"), "unsupported_subscription"),
    ],
)
def test_unusable_notifications_are_refused(item: dict[str, Any], reason: str) -> None:
    event = parse_event(item)
    out = event if isinstance(event, Translation) else HS.translate(event, {})
    assert out.reason == reason and not out.events


# -- Pipedrive ---------------------------------------------------------------------------------


def pd(
    action: str = "change",
    data: dict[str, Any] | None = None,
    previous: dict[str, Any] | None = None,
    delivery: str = "b3f9a9a0-1",
    timestamp: Any = "2026-01-02T10:00:00.000Z",
) -> dict[str, Any]:
    return {
        "meta": {
            "action": action,
            "entity": "deal",
            "entity_id": "42",
            "id": delivery,
            "timestamp": timestamp,
            "version": "2.0",
            "company_id": "1",
            "user_id": "7",
            "attempt": 1,
            "webhook_id": "99",
            "is_bulk_edit": False,
            "change_source": "app",
        },
        "data": data,
        "previous": previous,
    }


def deal(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": 42,
        "title": "Big deal",
        "value": 2000,
        "currency": "EUR",
        "status": "open",
        "stage_id": 3,
        "owner_id": 7,
        "org_id": 55,
        "person_id": 12,
        "add_time": "2026-01-01T09:00:00Z",
        "update_time": "2026-01-02T10:00:00Z",
        "won_time": None,
        "lost_time": None,
    }
    base.update(fields)
    return base


def test_pipedrive_open_deal_states_everything() -> None:
    out = PD.translate(pd("create", deal(), None))
    types = [e["type"] for e in out.events]
    assert types == ["deal.created", "deal.updated", "deal.stage_changed", "deal.reopened"]
    created, updated, moved, _ = out.events
    assert created["occurred_at"] == "2026-01-01T09:00:00Z"
    assert (updated["rep_id"], updated["amount"], updated["currency"]) == ("bob", 2000.0, "EUR")
    assert moved["to_stage"] == "proposal"
    assert all(e["deal_id"] == "42" for e in out.events)


def test_pipedrive_won_and_lost_at_their_times() -> None:
    won = PD.translate(
        pd(data=deal(status="won", won_time="2026-01-02T09:59:00Z"), previous={"status": "open"})
    )
    final = won.events[-1]
    assert final["type"] == "deal.won" and final["occurred_at"] == "2026-01-02T09:59:00Z"
    assert (final["customer_id"], final["rep_id"], final["amount"], final["lead_id"]) == (
        "55",
        "bob",
        2000.0,
        "12",
    )
    lost = PD.translate(pd(data=deal(status="lost", lost_time=1767347940, org_id=None)))
    assert lost.events[-1]["type"] == "deal.lost" and lost.events[-1]["occurred_at"] == "2026-01-02T09:59:00Z"


def test_pipedrive_retry_and_created_ids() -> None:
    a = PD.translate(pd(data=deal()))
    assert PD.translate(pd(data=deal())).events == a.events  # a retry keeps meta.id
    b = PD.translate(pd(data=deal(value=3000), delivery="b3f9a9a0-2"))
    assert a.events[0]["event_id"] == b.events[0]["event_id"]  # deal.created: one id per deal
    assert {e["event_id"] for e in a.events[1:]}.isdisjoint(e["event_id"] for e in b.events[1:])


def test_pipedrive_delete_v1_and_refusals() -> None:
    deleted = PD.translate(pd("delete", None, deal()))
    assert [e["type"] for e in deleted.events] == ["deal.deleted"]
    v1 = {
        "meta": {"action": "updated", "object": "deal", "id": 8, "timestamp": 1767348000, "v": 1},
        "current": deal(stage_id=1, owner_id={"value": 7, "name": "Bob"}),
        "previous": deal(stage_id=3),
    }
    v1_events = PD.translate(v1).events
    assert PD.translate(v1).events == v1_events  # a v1 retry: the same ids
    later = {**v1, "meta": {**v1["meta"], "timestamp": 1767348060}}  # another change of deal 8
    assert {e["event_id"] for e in PD.translate(later).events[1:]}.isdisjoint(
        e["event_id"] for e in v1_events
    )
    assert v1_events[2]["to_stage"] == "prospecting" and v1_events[1]["rep_id"] == "bob"
    unmapped = PD.translate(pd(data=deal(stage_id=9)))
    assert (unmapped.reason, unmapped.field_name) == (
        "unmapped_stage",
        "data.stage_id",
    ) and "9" in unmapped.detail
    assert PD.translate([1, 2]).reason == "invalid_payload"
    assert PD.translate(pd(data=deal(status="maybe"))).reason == "invalid_payload"
    assert PD.translate(pd(data=deal(value="a lot"))).reason == "invalid_amount"
    assert PD.translate({**pd(data=deal()), "meta": {**pd()["meta"], "entity": "person"}}).reason == (
        "unsupported_entity"
    )


def test_vendor_ids_and_times() -> None:
    assert [vendor_id(v) for v in (5, "5", 5.0, True, None, "")] == ["5", "5", "5", None, None, None]
    assert parse_time("2026-01-02 10:00:00") == parse_time(1767348000) == parse_time("1767348000")
    assert parse_time("2026-01-02T11:00:00+01:00") == parse_time("2026-01-02T10:00:00Z")
    assert parse_time("soon") is None and parse_time(None) is None


def test_stage_map_must_target_configured_stages() -> None:
    with pytest.raises(ValueError, match="use one of"):
        StageMap.parse("x=closing", STAGES, "KPI_HUBSPOT_STAGES")
