"""Stored webhooks -> events (streams.hooks_translator) -> the store, on the real Redis.

The HubSpot record state lives in Redis, so order, retries and redeliveries are tested here:
the same notifications in any order, with retries, end as the same KPIs, and those are the
KPIs the payloads imply.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from kpi_app.bootstrap import build_runtime
from kpi_app.hooks_web import envelope
from kpi_state.settings import Settings
from streams.hooks_translator import HookTranslator, Translated

pytestmark = pytest.mark.integration

MAPPING = {
    "hubspot_stages": "appointmentscheduled=prospecting,contractsent=proposal,closedwon=won,closedlost=lost",
    "hubspot_owners": "101=alice",
    "pipedrive_stages": "1=prospecting,3=proposal",
    "pipedrive_owners": "7=bob",
}
T0 = (int(time.time()) - 3600) * 1000  # an hour ago, in ms


def hs(n: int, subscription: str, obj: int, at: int, **extra: Any) -> dict[str, Any]:
    return {
        "eventId": n,
        "subscriptionId": 1,
        "portalId": 62515,
        "appId": 7,
        "occurredAt": T0 + at * 1000,
        "subscriptionType": subscription,
        "attemptNumber": 0,
        "objectId": obj,
        "changeSource": "CRM",
        **extra,
    }


def prop(n: int, obj: int, at: int, name: str, value: str) -> dict[str, Any]:
    return hs(n, "deal.propertyChange", obj, at, propertyName=name, propertyValue=value)


def hubspot_notifications() -> list[dict[str, Any]]:
    return [
        # A: won by alice (owner 101) for 1500, customer company 9001, after a stage change.
        hs(1, "deal.creation", 5001, 0),
        prop(2, 5001, 1, "amount", "1500"),
        prop(3, 5001, 2, "hubspot_owner_id", "101"),
        hs(
            4,
            "deal.associationChange",
            5001,
            3,
            associationType="DEAL_TO_COMPANY",
            fromObjectId=5001,
            toObjectId=9001,
            associationRemoved=False,
        ),
        prop(5, 5001, 4, "dealstage", "contractsent"),
        prop(6, 5001, 5, "dealstage", "closedwon"),
        # B: lost by owner 102 (unmapped: used as is).
        hs(7, "deal.creation", 5002, 0),
        prop(8, 5002, 1, "hubspot_owner_id", "102"),
        prop(9, 5002, 2, "amount", "800"),
        prop(10, 5002, 3, "dealstage", "closedlost"),
        # C: open in proposal, 300.
        hs(11, "deal.creation", 5003, 0),
        prop(12, 5003, 1, "amount", "300"),
        prop(13, 5003, 2, "dealstage", "contractsent"),
        # D: deleted.
        hs(14, "deal.creation", 5004, 0),
        prop(15, 5004, 1, "amount", "50"),
        hs(16, "deal.deletion", 5004, 3),
        # E: an unmapped stage: a dead letter, the deal stays at the first stage.
        hs(17, "deal.creation", 5005, 0),
        prop(18, 5005, 1, "dealstage", "999"),
    ]


def pipedrive_deliveries() -> list[dict[str, Any]]:
    def delivery(n: int, action: str, deal: int, at: int, data: dict[str, Any] | None) -> dict[str, Any]:
        stamp = datetime.fromtimestamp(T0 / 1000 + at, UTC).isoformat()
        meta = {
            "action": action,
            "entity": "deal",
            "entity_id": str(deal),
            "id": f"pd-{n}",
            "timestamp": stamp,
            "version": "2.0",
            "attempt": 1,
        }
        return {"meta": meta, "data": data, "previous": None}

    add = datetime.fromtimestamp(T0 / 1000, UTC).isoformat()
    won_at = datetime.fromtimestamp(T0 / 1000 + 9, UTC).isoformat()
    open_42 = {
        "id": 42,
        "value": 2000,
        "currency": "EUR",
        "status": "open",
        "stage_id": 3,
        "owner_id": 7,
        "org_id": 55,
        "add_time": add,
    }
    return [
        delivery(1, "create", 42, 1, open_42),
        delivery(2, "change", 42, 10, {**open_42, "status": "won", "won_time": won_at}),
        delivery(
            3, "create", 43, 1, {"id": 43, "value": 10, "status": "open", "stage_id": 1, "add_time": add}
        ),
        delivery(4, "delete", 43, 5, None),
    ]


def envelopes() -> list[bytes]:
    now = int(time.time() * 1000)
    out = [envelope("hubspot", orjson.dumps([item]), now) for item in hubspot_notifications()]
    return out + [envelope("pipedrive", orjson.dumps(d), now) for d in pipedrive_deliveries()]


def translate_and_apply(settings: Settings, messages: list[bytes]) -> tuple[dict[str, Any], list[Translated]]:
    async def main() -> tuple[dict[str, Any], list[Translated]]:
        runtime = build_runtime(settings)
        try:
            translator = HookTranslator(settings, runtime.redis)
            results = []
            for message in messages:
                result = await translator.translate(message)
                results.append(result)
                now = datetime.now(UTC)
                parsed = [runtime.parser.parse_object(e, now) for e in result.events]
                assert all(not isinstance(p, tuple) for p in parsed), parsed
                await runtime.store.apply(parsed)  # type: ignore[arg-type]
            doc = await runtime.reader.document(datetime.now(UTC))
            return orjson.loads(orjson.dumps(doc)), results
        finally:
            await runtime.aclose()

    return asyncio.run(main())


def test_webhooks_end_as_the_kpis_they_imply_in_any_order_with_retries(
    namespaces: Callable[..., Settings],
) -> None:
    ordered = envelopes()
    doc, results = translate_and_apply(namespaces(**MAPPING), ordered)
    total = doc["windows"]["24h"]["total"]
    assert (total["deals_created"], total["deals_won"], total["deals_lost"]) == (5, 2, 1)
    assert total["revenue_won"] == 3500.0 and total["new_customers"] == 2
    by_rep = doc["windows"]["24h"]["by_rep"]
    assert (by_rep["alice"]["deals_won"], by_rep["alice"]["revenue_won"]) == (1, 1500.0)
    assert (by_rep["bob"]["deals_won"], by_rep["bob"]["revenue_won"]) == (1, 2000.0)
    assert by_rep["102"]["deals_lost"] == 1
    stages = doc["current"]["pipeline"]["by_stage"]
    assert stages["proposal"] == {"open_deals": 1, "value": 300.0}
    assert stages["prospecting"]["open_deals"] == 1  # E, whose unmapped stage was not applied
    letters = [letter for r in results for letter in r.letters]
    assert [(letter.reason, letter.field) for letter in letters] == [("unmapped_stage", "propertyValue")]
    assert "999" in letters[0].detail

    # Shuffled, every message delivered twice (retries, redeliveries): the same document.
    rng = random.Random(7)
    for seed in range(3):
        messages = ordered * 2
        rng.shuffle(messages)
        shuffled, _ = translate_and_apply(namespaces(**MAPPING), messages)
        for name in ("24h", "7d", "all"):
            assert shuffled["windows"][name] == doc["windows"][name], (seed, name)
        assert shuffled["current"] == doc["current"]


def test_unusable_payloads_become_dead_letters(namespaces: Callable[..., Settings]) -> None:
    bad = [
        b"not json",
        b'{"vendor": "salesforce", "body": []}',
        envelope("hubspot", b'{"not": "an array"}', 0),
        envelope("hubspot", b'[{"subscriptionType": "deal.creation"}, 5]', 0),
        envelope(
            "pipedrive", b'{"meta": {"action": "change", "entity": "person", "id": 1, "timestamp": 1}}', 0
        ),
        envelope("pipedrive", b"[1, 2]", 0),
    ]
    _, results = translate_and_apply(namespaces(**MAPPING), bad)
    reasons = [[letter.reason for letter in r.letters] for r in results]
    assert reasons == [
        ["invalid_json"],
        ["invalid_payload"],
        ["invalid_payload"],
        ["invalid_payload", "invalid_payload"],
        ["unsupported_entity"],
        ["invalid_payload"],
    ]
    assert all(not r.events for r in results)
