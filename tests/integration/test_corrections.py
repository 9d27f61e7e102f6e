"""Contract v2 on the real store, one rule of DESIGN section 2 "Corrections" per test.

Each test applies a handful of events through ``KpiStore.apply`` (often in an order other than
their time order) and checks numbers worked out by hand from docs/corrections.md. The last test
is the must-show of the issue: the held-out scenarios of tests/corrections_scenarios.py replayed
with ``kpi replay`` in shuffled orders with retries give exactly the hand-counted KPIs.

Times are minutes before AS_OF (12:34:56): the ``1h`` window holds everything up to 59 minutes
before it, ``24h`` up to a day.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from kpi_state.events import EVENT_ADAPTER, Event, EventParser, Rejection
from kpi_state.report import KpiReader
from kpi_state.settings import Settings
from kpi_state.store import ApplyResult
from tests import corrections_scenarios as scenarios
from tests.conftest import SettingsFactory, StoreOpener
from tests.reference import assert_documents_match, reference_document

pytestmark = pytest.mark.integration

AS_OF = datetime(2026, 3, 31, 12, 34, 56, tzinfo=UTC)


def E(event_type: str, event_id: str, minutes_before: float, /, **fields: Any) -> Event:
    """An event ``minutes_before`` AS_OF."""
    at = (AS_OF - timedelta(minutes=minutes_before)).isoformat()
    return EVENT_ADAPTER.validate_python(
        {"type": event_type, "event_id": event_id, "occurred_at": at, **fields}
    )


def documents(
    open_store: StoreOpener, settings: Settings, *batches: list[Event]
) -> tuple[list[dict[str, Any]], list[ApplyResult]]:
    """Applies the batches one after another; the document read after each, and the results."""

    async def scenario() -> tuple[list[dict[str, Any]], list[ApplyResult]]:
        docs, results = [], []
        async with open_store(settings) as store:
            for batch in batches:
                results.append(await store.apply(batch))
                docs.append(await KpiReader(store, settings).document(AS_OF))
        return docs, results

    return asyncio.run(scenario())


def final(open_store: StoreOpener, settings: Settings, *batches: list[Event]) -> dict[str, Any]:
    """The document after every batch is applied, none of their events refused."""
    docs, results = documents(open_store, settings, *batches)
    assert [r.rejected for r in results if r.rejected] == []
    return docs[-1]


def pick(kpis: dict[str, Any], *names: str) -> tuple[Any, ...]:
    return tuple(kpis[name] for name in names)


def entries(**nonzero: int) -> dict[str, int]:
    """A stage_entries map: the given entries, 0 for the other stages."""
    out = dict.fromkeys(("prospecting", "qualification", "proposal", "negotiation", "won"), 0)
    out.update(nonzero)
    return out


FUNNEL = ("deals_created", "deals_won", "deals_lost", "revenue_won", "new_customers")


# ------------------------------------------------------------------ one rule per test


def test_latest_statement_wins_per_attribute(make_settings: SettingsFactory, open_store: StoreOpener) -> None:
    events = [
        E("lead.created", "l", 50, lead_id="L", source="web", segment="smb", rep_id="ann"),
        E("lead.updated", "l-old", 55, lead_id="L", source="ads"),  # older than lead.created: loses
        E("lead.updated", "l-seg", 40, lead_id="L", segment="ent"),  # states the segment only
        E("deal.created", "c", 45, deal_id="D", rep_id="alice", amount=100, lead_id="L"),
        E("deal.updated", "u-bob", 30, deal_id="D", rep_id="bob"),
        E("deal.updated", "u-carol", 35, deal_id="D", rep_id="carol"),  # older than bob's: loses
        E("deal.updated", "u-300", 20, deal_id="D", amount=300),
        E("deal.updated", "u-200", 25, deal_id="D", amount=200),  # older: loses
        # One instant, two owners: the greater event_id in code-point order ("u-b") wins.
        E("deal.updated", "u-b", 10, deal_id="D", rep_id="eve"),
        E("deal.updated", "u-a", 10, deal_id="D", rep_id="dan"),
    ]
    document = final(open_store, make_settings(), list(reversed(events[5:])), events[:5])
    window = document["windows"]["1h"]
    assert sorted(window["by_rep"]) == ["ann", "eve"]
    assert window["by_rep"]["eve"]["deals_created"] == 1
    assert window["by_rep"]["eve"]["stage_entries"] == entries(prospecting=1)
    assert window["by_rep"]["ann"]["leads"] == 1
    assert list(window["by_source"]) == ["web"] and list(window["by_segment"]) == ["ent"]
    assert pick(window["by_source"]["web"], "leads", "deals_created") == (1, 1)
    assert document["current"]["pipeline"]["by_stage"]["prospecting"] == {"open_deals": 1, "value": 300.0}


def test_reopen_takes_the_win_back(make_settings: SettingsFactory, open_store: StoreOpener) -> None:
    won = [
        E("deal.created", "c", 50, deal_id="D", rep_id="alice", amount=100),
        E("deal.won", "w", 30, deal_id="D", customer_id="C", rep_id="alice", amount=100),
    ]
    reopen = E("deal.reopened", "r", 10, deal_id="D")
    (before, after), _ = documents(open_store, make_settings(), won, [reopen])
    assert pick(before["windows"]["1h"]["total"], *FUNNEL) == (1, 1, 0, 100.0, 1)
    assert before["current"]["active_customers"] == 1
    total = after["windows"]["1h"]["total"]
    assert pick(total, *FUNNEL) == (1, 0, 0, 0.0, 0)
    assert total["stage_entries"] == entries(prospecting=1)
    assert total["sales_cycle_days"] is None
    assert after["current"]["active_customers"] == 0
    assert after["current"]["pipeline"]["by_stage"]["prospecting"] == {"open_deals": 1, "value": 100.0}


def test_rewin_by_another_rep_for_more_counts_once(
    make_settings: SettingsFactory, open_store: StoreOpener
) -> None:
    events = [
        E("deal.created", "c", 50, deal_id="D", rep_id="alice", amount=100),
        E("deal.won", "w1", 40, deal_id="D", customer_id="C", rep_id="alice", amount=100),
        E("deal.reopened", "r", 30, deal_id="D"),
        E("deal.won", "w2", 20, deal_id="D", customer_id="C", rep_id="bob", amount=150),
    ]
    document = final(open_store, make_settings(), [events[3], events[1]], [events[2], events[0]])
    window = document["windows"]["1h"]
    assert pick(window["total"], *FUNNEL) == (1, 1, 0, 150.0, 1)
    assert window["total"]["sales_cycle_days"] == pytest.approx(30 / 1440)  # created -> latest win
    assert list(window["by_rep"]) == ["bob"]  # the owner now: the creation is his too
    assert pick(window["by_rep"]["bob"], *FUNNEL) == (1, 1, 0, 150.0, 1)
    assert window["by_rep"]["bob"]["stage_entries"] == entries(prospecting=1, won=1)
    assert document["current"]["active_customers"] == 1


def test_won_then_lost_is_lost(make_settings: SettingsFactory, open_store: StoreOpener) -> None:
    events = [
        E("deal.created", "c", 50, deal_id="D", rep_id="alice", amount=100),
        E("deal.won", "w", 30, deal_id="D", customer_id="C", rep_id="alice", amount=100),
        E("deal.lost", "x", 20, deal_id="D", rep_id="alice", reason="cancelled"),
    ]
    document = final(open_store, make_settings(), list(reversed(events)))
    total = document["windows"]["1h"]["total"]
    assert pick(total, *FUNNEL) == (1, 0, 1, 0.0, 0)
    assert total["win_rate"] == 0.0
    assert total["stage_entries"] == entries(prospecting=1)
    assert document["current"]["active_customers"] == 0
    assert document["current"]["pipeline"]["open_deals"] == 0


def test_reopen_into_the_pipeline(make_settings: SettingsFactory, open_store: StoreOpener) -> None:
    events = [
        E("deal.created", "c", 50, deal_id="D", rep_id="alice", amount=100, stage="proposal"),
        E("deal.lost", "x", 30, deal_id="D", rep_id="alice"),
        E("deal.reopened", "r", 10, deal_id="D", stage="negotiation"),
    ]
    document = final(open_store, make_settings(), [events[2]], [events[0], events[1]])
    total = document["windows"]["1h"]["total"]
    assert pick(total, *FUNNEL) == (1, 0, 0, 0.0, 0)
    assert total["stage_entries"] == entries(proposal=1)  # a reopen is no stage entry
    pipeline = document["current"]["pipeline"]
    assert pipeline["by_stage"]["negotiation"] == {"open_deals": 1, "value": 100.0}
    assert (pipeline["open_deals"], pipeline["value"], pipeline["weighted_value"]) == (1, 100.0, 80.0)


def test_amount_corrected_after_the_win(make_settings: SettingsFactory, open_store: StoreOpener) -> None:
    events = [
        E("deal.created", "c", 200, deal_id="D", rep_id="alice", amount=100),
        E("deal.won", "w", 100, deal_id="D", customer_id="C", rep_id="alice", amount=100),
        E("deal.updated", "u", 10, deal_id="D", amount=120),
    ]
    document = final(open_store, make_settings(), [events[2]], events[:2])
    windows = document["windows"]
    # The current amount, placed at the win (100 minutes ago): in 24h, not in 1h.
    assert pick(windows["24h"]["total"], "deals_won", "revenue_won") == (1, 120.0)
    assert windows["24h"]["by_rep"]["alice"]["avg_deal_size"] == 120.0
    assert pick(windows["1h"]["total"], "deals_won", "revenue_won") == (0, 0.0)


def test_open_deal_reassigned(make_settings: SettingsFactory, open_store: StoreOpener) -> None:
    events = [
        E("deal.created", "c", 50, deal_id="D", rep_id="alice", amount=100, stage="proposal"),
        E("deal.stage_changed", "s1", 40, deal_id="D", to_stage="negotiation"),  # names no rep
        E("deal.stage_changed", "s2", 35, deal_id="D", to_stage="negotiation", rep_id="carol"),
        E("deal.updated", "u", 20, deal_id="D", rep_id="bob"),
    ]
    document = final(open_store, make_settings(), events[2:], events[:2])
    by_rep = document["windows"]["1h"]["by_rep"]
    assert sorted(by_rep) == ["bob", "carol"]
    assert by_rep["bob"]["deals_created"] == 1
    assert by_rep["bob"]["stage_entries"] == entries(proposal=1, negotiation=1)
    assert by_rep["carol"]["stage_entries"] == entries(negotiation=1)  # she moved it: hers
    assert by_rep["carol"]["deals_created"] == 0
    assert document["current"]["pipeline"]["by_stage"]["negotiation"] == {"open_deals": 1, "value": 100.0}


WON_WITH_LEAD = [
    E("lead.created", "l", 55, lead_id="L", source="web", rep_id="ann"),
    E("deal.created", "c", 50, deal_id="D", rep_id="alice", amount=100, lead_id="L"),
    E("deal.won", "w", 30, deal_id="D", customer_id="C", rep_id="alice", amount=100),
]


def test_won_deal_deleted(make_settings: SettingsFactory, open_store: StoreOpener) -> None:
    deleted = E("deal.deleted", "d", 10, deal_id="D")
    document = final(open_store, make_settings(), [deleted], WON_WITH_LEAD)
    window = document["windows"]["1h"]
    total = window["total"]
    assert pick(total, *FUNNEL) == (0, 0, 0, 0.0, 0)
    assert pick(total, "leads", "lead_conversions", "cohort_conversions") == (1, 0, 0)
    assert total["stage_entries"] == entries()
    assert list(window["by_rep"]) == ["ann"] and list(window["by_source"]) == ["web"]
    assert document["current"]["active_customers"] == 0


def test_delete_then_restore(make_settings: SettingsFactory, open_store: StoreOpener) -> None:
    deleted = E("deal.deleted", "d", 10, deal_id="D")
    stale = E("deal.restored", "r-old", 20, deal_id="D")  # before the deletion: still deleted
    restored = E("deal.restored", "r", 5, deal_id="D")
    (gone, back), _ = documents(open_store, make_settings(), [deleted, stale, *WON_WITH_LEAD], [restored])
    assert pick(gone["windows"]["1h"]["total"], *FUNNEL) == (0, 0, 0, 0.0, 0)
    total = back["windows"]["1h"]["total"]
    assert pick(total, *FUNNEL) == (1, 1, 0, 100.0, 1)
    assert pick(total, "leads", "lead_conversions", "cohort_conversions") == (1, 1, 1)
    assert total["stage_entries"] == entries(prospecting=1, won=1)
    assert sorted(back["windows"]["1h"]["by_rep"]) == ["alice", "ann"]
    assert back["current"]["active_customers"] == 1


def test_lead_source_corrected(make_settings: SettingsFactory, open_store: StoreOpener) -> None:
    events = [
        E("lead.created", "l", 50, lead_id="L", source="ads", rep_id="ann"),
        E("deal.created", "c", 40, deal_id="D", rep_id="bob", amount=100, lead_id="L"),
        E("deal.won", "w", 30, deal_id="D", customer_id="C", rep_id="bob", amount=100),
        E("lead.updated", "u", 10, lead_id="L", source="web"),
    ]
    (before, after), _ = documents(open_store, make_settings(), events[:3], events[3:])
    assert list(before["windows"]["1h"]["by_source"]) == ["ads"]
    by_source = after["windows"]["1h"]["by_source"]
    assert list(by_source) == ["web"]  # the lead and its deal moved; nothing is left for ads
    web = by_source["web"]
    assert pick(web, "leads", "lead_conversions", "cohort_conversions") == (1, 1, 1)
    assert pick(web, *FUNNEL) == (1, 1, 0, 100.0, 1)


def test_lead_deleted(make_settings: SettingsFactory, open_store: StoreOpener) -> None:
    events = [
        E("lead.created", "l", 50, lead_id="L", source="web", rep_id="ann"),
        E("lead.qualified", "q", 45, lead_id="L"),
        E("deal.created", "c", 40, deal_id="D", rep_id="bob", amount=100, lead_id="L"),
        E("deal.won", "w", 30, deal_id="D", customer_id="C", rep_id="bob", amount=100),
        E("lead.deleted", "d", 10, lead_id="L"),
    ]
    document = final(open_store, make_settings(), events[3:], events[:3])
    window = document["windows"]["1h"]
    total = window["total"]
    assert pick(total, "leads", "qualified_leads", "lead_conversions", "cohort_conversions") == (0, 0, 0, 0)
    assert pick(total, *FUNNEL) == (1, 1, 0, 100.0, 1)  # the deal stays, with no known lead
    assert list(window["by_rep"]) == ["bob"] and list(window["by_source"]) == ["unknown"]
    assert pick(window["by_source"]["unknown"], *FUNNEL) == (1, 1, 0, 100.0, 1)
    assert document["current"]["active_customers"] == 1


def test_bare_deal_created_filled_by_later_updates(
    make_settings: SettingsFactory, open_store: StoreOpener
) -> None:
    lead = E("lead.created", "l", 55, lead_id="L", source="web", rep_id="ann")
    bare = E("deal.created", "c", 50, deal_id="D")
    updates = [
        E("deal.updated", "u1", 40, deal_id="D", rep_id="bob"),
        E("deal.updated", "u2", 30, deal_id="D", amount=500, lead_id="L"),
    ]
    (before, after), _ = documents(open_store, make_settings(), [lead, bare], updates)
    window = before["windows"]["1h"]
    assert pick(window["by_rep"]["unassigned"], "deals_created") == (1,)
    assert window["by_rep"]["unassigned"]["stage_entries"] == entries(prospecting=1)
    assert window["by_source"]["unknown"]["deals_created"] == 1
    assert before["current"]["pipeline"]["by_stage"]["prospecting"] == {"open_deals": 1, "value": 0.0}
    window = after["windows"]["1h"]
    assert sorted(window["by_rep"]) == ["ann", "bob"]
    assert window["by_rep"]["bob"]["stage_entries"] == entries(prospecting=1)
    assert list(window["by_source"]) == ["web"]
    assert pick(window["by_source"]["web"], "leads", "deals_created") == (1, 1)
    assert after["current"]["pipeline"]["by_stage"]["prospecting"] == {"open_deals": 1, "value": 500.0}


def test_merge_is_a_deletion_and_a_relink(make_settings: SettingsFactory, open_store: StoreOpener) -> None:
    events = [
        E("lead.created", "la", 55, lead_id="LA", source="web", rep_id="ann"),
        E("lead.created", "lb", 54, lead_id="LB", source="ads", rep_id="ann"),  # the duplicate
        E("deal.created", "c", 50, deal_id="D", rep_id="bob", amount=100, lead_id="LB"),
        E("deal.won", "w", 40, deal_id="D", customer_id="C", rep_id="bob", amount=100),
    ]
    merge = [
        E("lead.deleted", "m1", 10, lead_id="LB"),
        E("deal.updated", "m2", 10, deal_id="D", lead_id="LA"),
    ]
    (before, after), _ = documents(open_store, make_settings(), events, merge)
    assert before["windows"]["1h"]["total"]["leads"] == 2
    assert before["windows"]["1h"]["by_source"]["ads"]["lead_conversions"] == 1
    window = after["windows"]["1h"]
    assert list(window["by_source"]) == ["web"]
    web = window["by_source"]["web"]
    assert pick(web, "leads", "lead_conversions", "cohort_conversions") == (1, 1, 1)
    assert pick(web, *FUNNEL) == (1, 1, 0, 100.0, 1)
    assert window["total"]["leads"] == 1


def test_currency_only_edit(make_settings: SettingsFactory, open_store: StoreOpener) -> None:
    settings = make_settings(currency_rates="USD=0.5")
    events = [
        # Won for 1000 EUR; then the currency is corrected: 1000 USD = 500 EUR.
        E("deal.created", "c1", 50, deal_id="D1", rep_id="bob", amount=1000),
        E("deal.won", "w1", 30, deal_id="D1", customer_id="C", rep_id="bob", amount=1000),
        E("deal.updated", "u1", 10, deal_id="D1", currency="USD"),
        # Open at 200 USD = 100 EUR; corrected to EUR: 200.
        E("deal.created", "c2", 50, deal_id="D2", amount=200, currency="USD"),
        E("deal.updated", "u2", 10, deal_id="D2", currency="EUR"),
        # A currency edit older than the amount statement changes nothing: 300.
        E("deal.created", "c3", 50, deal_id="D3", amount=300, stage="proposal"),
        E("deal.updated", "u3", 52, deal_id="D3", currency="USD"),
    ]
    document = final(open_store, settings, list(reversed(events)))
    assert document["windows"]["1h"]["total"]["revenue_won"] == 500.0
    by_stage = document["current"]["pipeline"]["by_stage"]
    assert by_stage["prospecting"] == {"open_deals": 1, "value": 200.0}
    assert by_stage["proposal"] == {"open_deals": 1, "value": 300.0}


def test_second_deal_created_is_still_a_conflict(
    make_settings: SettingsFactory, open_store: StoreOpener
) -> None:
    first = [
        E("deal.created", "c", 50, deal_id="D", rep_id="alice", amount=100),
        E("lead.created", "l", 50, lead_id="L", source="web"),
    ]
    again = [
        E("deal.created", "c2", 40, deal_id="D", rep_id="bob", amount=900),
        E("lead.created", "l2", 40, lead_id="L", source="ads"),
        # Several terminal events of one deal are no conflict any more.
        E("deal.won", "w", 30, deal_id="D", customer_id="C", rep_id="alice", amount=100),
        E("deal.lost", "x", 20, deal_id="D", rep_id="alice"),
        E("deal.won", "w2", 10, deal_id="D", customer_id="C", rep_id="alice", amount=100),
    ]
    docs, results = documents(open_store, make_settings(), first, again, again[:1])
    assert [(pos, r.reason) for pos, r in results[1].rejected] == [(0, "conflict"), (1, "conflict")]
    assert results[1].applied == 3
    assert [r.reason for _, r in results[2].rejected] == ["conflict"]  # its retry: a conflict again
    window = docs[-1]["windows"]["1h"]
    assert pick(window["total"], "deals_created", "deals_won", "deals_lost", "leads") == (1, 1, 0, 1)
    assert sorted(window["by_rep"]) == ["alice", "unassigned"]
    assert window["by_source"]["web"]["leads"] == 1 and window["by_source"]["unknown"]["deals_won"] == 1
    assert docs[-1]["current"]["active_customers"] == 1


def test_update_stating_nothing_is_rejected() -> None:
    parser = EventParser(Settings(namespace="unit"))
    base = {"event_id": "u", "occurred_at": "2026-03-31T12:00:00Z"}
    now = datetime.now(UTC)
    for blank in ({}, {"rep_id": None}, {"rep_id": "   ", "amount": None, "source": None}):
        deal = parser.parse_object({**base, "type": "deal.updated", "deal_id": "D", **blank}, now)
        assert isinstance(deal, Rejection)
        assert (deal.reason, deal.field) == ("missing_field", "amount|rep_id|lead_id|currency")
        lead = parser.parse_object({**base, "type": "lead.updated", "lead_id": "L", **blank}, now)
        assert isinstance(lead, Rejection)
        assert (lead.reason, lead.field) == ("missing_field", "source|segment|rep_id")
    stated = parser.parse_object({**base, "type": "deal.updated", "deal_id": "D", "currency": "EUR"}, now)
    assert not isinstance(stated, Rejection)


# ------------------------------------------------------------------ must show: kpi replay


def replay_file(settings: Settings, path: Path, rejects: Path) -> dict[str, Any]:
    """`kpi replay` as a user runs it; its JSON summary."""
    env = {**os.environ, "KPI_CURRENCY_RATES": scenarios.RATES}
    args = [sys.executable, "-m", "kpi_app", "replay", str(path), "--no-progress", "--json"]
    args += ["--rejects", str(rejects), "--redis-url", settings.redis_url, "--namespace", settings.namespace]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    summary: dict[str, Any] = orjson.loads(done.stdout)
    return summary


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_hand_worked_scenarios_replayed_in_any_order_with_retries(
    seed: int, tmp_path: Path, make_settings: SettingsFactory, open_store: StoreOpener
) -> None:
    """Every correction rule at once, shuffled, some lines sent twice: the hand-counted KPIs in
    all, 30d and 7d, by rep and by source, the pipeline and the active customers."""
    rng = random.Random(seed)
    lines = [orjson.dumps(e) for e in scenarios.EVENTS]
    retriable = [
        line
        for line, e in zip(lines, scenarios.EVENTS, strict=True)
        if e["event_id"] not in scenarios.CONFLICTING
    ]
    retries = rng.sample(retriable, 12)
    shuffled = rng.sample(lines + retries, len(lines) + len(retries))
    path = tmp_path / "scenarios.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in shuffled))
    settings = make_settings(currency_rates=scenarios.RATES)

    async def read() -> dict[str, Any]:
        async with open_store(settings) as store:
            return await KpiReader(store, settings).document(scenarios.AS_OF)

    summary = replay_file(settings, path, tmp_path / "rejects.jsonl")
    document = asyncio.run(read())
    assert summary["rejected_by_reason"] == {"conflict": 1, "missing_field": 1}
    assert summary["duplicates"] == len(retries)
    assert summary["applied"] == len(lines) - len(scenarios.REJECTED)
    assert scenarios.mismatches(document) == []
    # The reference agrees (a cross-check of the hand count, on every KPI).
    parser = EventParser(settings)
    events = [parser.parse_bytes(line, datetime.now(UTC)) for line in shuffled]
    valid = [e for e in events if not isinstance(e, Rejection)]
    assert_documents_match(document, reference_document(valid, settings, scenarios.AS_OF))
