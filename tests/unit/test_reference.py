"""Hand-computed examples for the test oracle (tests/reference.py), so it can be trusted."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import pytest

from kpi_state.events import EVENT_ADAPTER, Event, EventParser, Rejection
from kpi_state.settings import Settings
from tests import corrections_scenarios as scenarios
from tests.reference import assert_documents_match, differences, in_window, reference_document

AS_OF = datetime.fromisoformat("2026-03-31T12:34:56+00:00")
UTC_SETTINGS = Settings(namespace="unit-reference")


def E(event_type: str, event_id: str, at: str, /, **fields: Any) -> Event:
    payload = {"type": event_type, "event_id": event_id, "occurred_at": at, **fields}
    return EVENT_ADAPTER.validate_python(payload)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def doc(events: list[Event], settings: Settings = UTC_SETTINGS, as_of: datetime = AS_OF) -> dict[str, Any]:
    return reference_document(events, settings, as_of)


def approx(value: float) -> Any:
    return pytest.approx(value, rel=1e-12)


# ------------------------------------------------------------------ funnel


FUNNEL = [
    E(
        "lead.created",
        "e01",
        "2026-03-20T09:00:00Z",
        lead_id="L1",
        source="web",
        segment="smb",
        rep_id="alice",
    ),
    E("lead.created", "e02", "2026-03-20T10:00:00Z", lead_id="L2", source="ads", segment="ent", rep_id="bob"),
    E("lead.created", "e03", "2026-03-21T10:00:00Z", lead_id="L3", source="web", segment="smb"),
    E("lead.qualified", "e04", "2026-03-22T10:00:00Z", lead_id="L1"),
    E("lead.qualified", "e05", "2026-03-23T10:00:00Z", lead_id="L1"),  # not the first: no count
    E("lead.qualified", "e06", "2026-03-22T11:00:00Z", lead_id="L2"),
    E("deal.created", "e07", "2026-03-24T00:00:00Z", deal_id="D1", rep_id="alice", amount=1000, lead_id="L1"),
    E("deal.created", "e08", "2026-03-24T00:00:00Z", deal_id="D2", rep_id="bob", amount=500, lead_id="L2"),
    E("deal.stage_changed", "e09", "2026-03-25T00:00:00Z", deal_id="D1", to_stage="proposal"),
    E("deal.won", "e10", "2026-03-30T12:00:00Z", deal_id="D1", customer_id="C1", rep_id="alice", amount=1200),
    E("deal.lost", "e11", "2026-03-29T00:00:00Z", deal_id="D2", rep_id="bob"),
]


def test_funnel_of_three_leads_totals() -> None:
    total = doc(FUNNEL)["windows"]["30d"]["total"]
    assert total["leads"] == 3
    assert total["qualified_leads"] == 2
    assert total["qualification_rate"] == approx(2 / 3)
    assert total["lead_conversions"] == 1
    assert total["conversion_rate"] == approx(1 / 3)
    assert total["cohort_conversions"] == 1
    assert total["deals_created"] == 2
    assert (total["deals_won"], total["deals_lost"]) == (1, 1)
    assert total["win_rate"] == 0.5
    assert total["revenue_won"] == 1200.0
    assert total["avg_deal_size"] == 1200.0
    assert total["new_customers"] == 1
    assert total["sales_cycle_days"] == 6.5
    assert total["stage_entries"] == {
        "prospecting": 2,
        "qualification": 0,
        "proposal": 1,
        "negotiation": 0,
        "won": 1,
    }
    assert total["stage_conversion_rate"] == {
        "prospecting": 0.0,
        "qualification": None,
        "proposal": 0.0,
        "negotiation": None,
    }


def test_funnel_of_three_leads_breakdowns() -> None:
    window = doc(FUNNEL)["windows"]["30d"]
    assert sorted(window["by_source"]) == ["ads", "web"]
    web = window["by_source"]["web"]
    assert (web["leads"], web["qualified_leads"], web["lead_conversions"], web["deals_won"]) == (2, 1, 1, 1)
    assert web["conversion_rate"] == 0.5
    assert web["spend"] == 0.0 and web["cac"] == 0.0
    ads = window["by_source"]["ads"]
    assert (ads["leads"], ads["deals_created"], ads["deals_lost"], ads["win_rate"]) == (1, 1, 1, 0.0)
    # L3 has no owner: its lead is counted for "unassigned".
    assert sorted(window["by_rep"]) == ["alice", "bob", "unassigned"]
    assert window["by_rep"]["unassigned"]["leads"] == 1
    alice = window["by_rep"]["alice"]
    assert alice["stage_entries"]["proposal"] == 1  # the stage change without rep_id: the deal's rep
    assert alice["stage_entries"]["won"] == 1
    assert "spend" not in alice and "stage_entries" not in web and "cac" not in window["by_segment"]["smb"]


def test_windows_cut_the_funnel() -> None:
    windows = doc(FUNNEL)["windows"]
    assert windows["7d"]["total"]["leads"] == 0  # 03-25 .. 03-31
    assert windows["7d"]["total"]["lead_conversions"] == 1
    assert windows["7d"]["total"]["conversion_rate"] is None
    assert windows["24h"]["total"]["deals_won"] == 0  # 03-30T13:00 .. 03-31T13:00: won at 12:00
    assert windows["1h"]["total"]["deals_won"] == 0
    assert windows["all"] == windows["30d"]


# ------------------------------------------------------------------ joins and re-attribution


def test_won_deal_takes_source_from_the_lead_of_its_creation() -> None:
    events = [
        E("lead.created", "a", "2026-03-30T00:00:00Z", lead_id="L", source="web", segment="ent"),
        E("deal.created", "b", "2026-03-30T01:00:00Z", deal_id="D", rep_id="r", amount=5, lead_id="L"),
        E("deal.won", "c", "2026-03-30T02:00:00Z", deal_id="D", customer_id="C", rep_id="r2", amount=7),
    ]
    window = doc(events)["windows"]["7d"]
    assert window["by_source"]["web"]["deals_won"] == 1
    assert window["by_source"]["web"]["new_customers"] == 1
    assert window["by_segment"]["ent"]["lead_conversions"] == 1
    assert window["by_rep"]["r2"]["deals_won"] == 1
    assert window["by_rep"]["r2"]["revenue_won"] == 7.0
    # The lead has no owner: its conversion counts for "unassigned", not the deal's rep.
    assert window["by_rep"]["unassigned"]["lead_conversions"] == 1
    # Contract v2: the win states the owner last, so even the creation counts for r2.
    assert window["by_rep"]["r2"]["deals_created"] == 1
    assert "r" not in window["by_rep"]


def test_won_deal_with_a_lead_that_never_sent_lead_created() -> None:
    events = [
        E(
            "deal.won",
            "w",
            "2026-03-30T00:00:00Z",
            deal_id="D",
            customer_id="C",
            rep_id="r",
            amount=1,
            lead_id="ghost",
        )
    ]
    total = doc(events)["windows"]["7d"]["total"]
    assert total["lead_conversions"] == 1
    assert total["leads"] == 0 and total["conversion_rate"] is None
    assert total["cohort_conversions"] == 0
    by_source = doc(events)["windows"]["7d"]["by_source"]
    assert list(by_source) == ["unknown"]


def test_won_deal_without_any_lead_converts_nothing() -> None:
    events = [
        E("deal.won", "w", "2026-03-30T00:00:00Z", deal_id="D", customer_id="C", rep_id="r", amount=1),
        E("deal.created", "c", "2026-03-20T00:00:00Z", deal_id="D", rep_id="r", amount=1),
    ]
    total = doc(events)["windows"]["30d"]["total"]
    assert total["lead_conversions"] == 0
    assert total["sales_cycle_days"] == 10.0


def test_the_latest_lead_id_statement_wins_for_every_deal_kpi() -> None:
    lead_events = [
        E("lead.created", "l1", "2026-03-20T00:00:00Z", lead_id="L1", source="web"),
        E("lead.created", "l2", "2026-03-20T00:00:00Z", lead_id="L2", source="ads"),
    ]
    won = E(
        "deal.won",
        "w",
        "2026-03-22T00:00:00Z",
        deal_id="D",
        customer_id="C",
        rep_id="r",
        amount=1,
        lead_id="L2",
    )
    created = E("deal.created", "c", "2026-03-21T00:00:00Z", deal_id="D", rep_id="r", amount=1, lead_id="L1")
    window = doc([*lead_events, created, won])["windows"]["30d"]
    # The win states L2 after the creation stated L1: the deal is L2's, its creation included.
    assert window["by_source"]["web"]["deals_created"] == 0
    assert window["by_source"]["web"]["lead_conversions"] == 0
    ads = window["by_source"]["ads"]
    assert (ads["deals_created"], ads["deals_won"], ads["lead_conversions"], ads["cohort_conversions"]) == (
        1,
        1,
        1,
        1,
    )
    # A creation stated after the win: L1 is the current lead.
    late = created.model_copy(update={"occurred_at": at("2026-03-23T00:00:00Z")})
    window = doc([*lead_events, late, won])["windows"]["30d"]
    web = window["by_source"]["web"]
    assert (web["deals_created"], web["deals_won"], web["lead_conversions"]) == (1, 1, 1)
    assert window["by_source"]["ads"]["deals_won"] == 0


def test_lead_converts_once_at_its_earliest_win() -> None:
    events = [
        E("lead.created", "l", "2026-02-01T00:00:00Z", lead_id="L"),
        E(
            "deal.won",
            "w1",
            "2026-03-30T00:00:00Z",
            deal_id="D1",
            customer_id="C",
            rep_id="r",
            amount=1,
            lead_id="L",
        ),
        E(
            "deal.won",
            "w2",
            "2026-03-10T00:00:00Z",
            deal_id="D2",
            customer_id="C2",
            rep_id="r",
            amount=1,
            lead_id="L",
        ),
    ]
    windows = doc(events)["windows"]
    assert windows["7d"]["total"]["lead_conversions"] == 0
    assert windows["30d"]["total"]["lead_conversions"] == 1
    assert windows["30d"]["total"]["cohort_conversions"] == 0  # created 02-01, outside
    assert windows["90d"]["total"]["cohort_conversions"] == 1
    assert windows["all"]["total"]["new_customers"] == 2


def test_stage_change_without_rep_or_creation_is_unassigned() -> None:
    events = [E("deal.stage_changed", "s", "2026-03-31T12:00:00Z", deal_id="D", to_stage="proposal")]
    window = doc(events)["windows"]["1h"]
    assert list(window["by_rep"]) == ["unassigned"]
    assert window["by_rep"]["unassigned"]["stage_entries"]["proposal"] == 1
    assert window["by_source"] == {} and window["by_segment"] == {}
    assert doc(events)["current"]["pipeline"]["open_deals"] == 0  # never created


def test_new_customer_follows_the_first_win() -> None:
    events = [
        E("lead.created", "l", "2026-03-01T00:00:00Z", lead_id="L", source="web"),
        E("deal.won", "w1", "2026-03-30T00:00:00Z", deal_id="D1", customer_id="C", rep_id="bob", amount=1),
        E(
            "deal.won",
            "w2",
            "2026-03-29T00:00:00Z",
            deal_id="D2",
            customer_id="C",
            rep_id="alice",
            amount=1,
            lead_id="L",
        ),
    ]
    window = doc(events)["windows"]["7d"]
    assert window["by_rep"]["alice"]["new_customers"] == 1
    assert window["by_rep"]["bob"]["new_customers"] == 0
    assert window["by_source"]["web"]["new_customers"] == 1
    assert window["by_source"]["unknown"]["new_customers"] == 0
    assert doc(events)["current"]["active_customers"] == 1


# ------------------------------------------------------------------ ties by event_id


def test_ties_by_event_id_in_code_point_order() -> None:
    t = "2026-03-30T00:00:00Z"
    events = [
        # 'é' (U+00E9) sorts after 'z' (U+007A) by code point (a locale collation would disagree).
        E("deal.won", "é1", t, deal_id="D1", customer_id="C", rep_id="eve", amount=1),
        E("deal.won", "z1", t, deal_id="D2", customer_id="C", rep_id="zoe", amount=1),
        E("deal.created", "c", "2026-03-20T00:00:00Z", deal_id="D3", rep_id="r", amount=100),
        E("deal.stage_changed", "s-b", t, deal_id="D3", to_stage="negotiation", amount=300),
        E("deal.stage_changed", "s-a", t, deal_id="D3", to_stage="proposal", amount=200),
        E("lead.qualified", "q-B", t, lead_id="L"),
        E("lead.qualified", "q-a", "2026-03-30T00:00:00+00:00", lead_id="L"),
    ]
    d = doc(events)
    window = d["windows"]["7d"]
    assert window["by_rep"]["zoe"]["new_customers"] == 1
    assert window["by_rep"]["eve"]["new_customers"] == 0
    assert window["total"]["qualified_leads"] == 1
    pipeline = d["current"]["pipeline"]
    assert pipeline["by_stage"]["negotiation"] == {"open_deals": 1, "value": 300.0}
    assert pipeline["by_stage"]["proposal"] == {"open_deals": 0, "value": 0.0}
    assert pipeline["weighted_value"] == approx(300 * 0.8)


def test_latest_amount_may_come_from_creation() -> None:
    events = [
        E("deal.created", "c", "2026-03-20T00:00:00Z", deal_id="D", rep_id="r", amount=100, stage="proposal"),
        E("deal.stage_changed", "s", "2026-03-19T00:00:00Z", deal_id="D", to_stage="negotiation", amount=50),
        E("deal.created", "c2", "2026-03-20T00:00:00Z", deal_id="D2", rep_id="r", amount=10, currency="USD"),
    ]
    settings = Settings(namespace="unit", currency_rates="USD=0.5")
    pipeline = doc(events, settings)["current"]["pipeline"]
    # Contract v2: the latest stage statement sets the stage -- here the creation's, stated after
    # the stage change -- and the latest amount statement the value.
    assert pipeline["by_stage"]["proposal"] == {"open_deals": 1, "value": 100.0}
    assert pipeline["by_stage"]["negotiation"] == {"open_deals": 0, "value": 0.0}
    assert pipeline["by_stage"]["prospecting"] == {"open_deals": 1, "value": 5.0}
    assert pipeline["open_deals"] == 2 and pipeline["value"] == 105.0
    assert pipeline["weighted_value"] == approx(100 * 0.5 + 5 * 0.1)


# ------------------------------------------------------------------ window edges


@pytest.mark.parametrize(
    ("window", "inside", "outside"),
    [
        (
            "1h",
            ["2026-03-31T11:35:00Z", "2026-03-31T12:34:59.999999Z"],
            ["2026-03-31T11:34:59.999999Z", "2026-03-31T12:35:00Z"],
        ),
        (
            "24h",
            ["2026-03-30T13:00:00Z", "2026-03-31T12:59:59Z"],
            ["2026-03-30T12:59:59Z", "2026-03-31T13:00:00Z"],
        ),
        (
            "7d",
            ["2026-03-25T00:00:00Z", "2026-03-31T23:59:59Z"],
            ["2026-03-24T23:59:59Z", "2026-04-01T00:00:00Z"],
        ),
        ("30d", ["2026-03-02T00:00:00Z"], ["2026-03-01T23:59:59Z"]),
        ("90d", ["2026-01-01T00:00:00Z"], ["2025-12-31T23:59:59Z"]),
    ],
)
def test_window_edges(window: str, inside: list[str], outside: list[str]) -> None:
    # as_of 12:34:56: the window starts at floor_g(T) - (n-1)g and ends before floor_g(T) + g.
    for text in inside:
        assert in_window(at(text), window, AS_OF, UTC_SETTINGS), text
    for text in outside:
        assert not in_window(at(text), window, AS_OF, UTC_SETTINGS), text


def test_window_edges_in_a_document() -> None:
    events = [
        E("lead.created", "in", "2026-03-31T11:35:00Z", lead_id="A"),
        E("lead.created", "out", "2026-03-31T11:34:59Z", lead_id="B"),
        E("lead.created", "next", "2026-03-31T12:35:00Z", lead_id="C"),
    ]
    windows = doc(events)["windows"]
    assert windows["1h"]["total"]["leads"] == 1
    assert windows["24h"]["total"]["leads"] == 3
    assert windows["all"]["total"]["leads"] == 3


def test_dst_day_bucket_in_berlin() -> None:
    berlin = Settings(namespace="unit", timezone="Europe/Berlin")
    # 2026-03-29 is 23 hours long in Berlin: 2026-03-28T23:00Z .. 2026-03-29T22:00Z.
    as_of = at("2026-03-29T12:00:00Z")
    assert in_window(at("2026-03-28T23:00:00Z"), "7d", as_of, berlin)
    assert in_window(at("2026-03-29T21:59:59Z"), "7d", as_of, berlin)
    assert not in_window(at("2026-03-29T22:00:00Z"), "7d", as_of, berlin)
    # the window's first day, 2026-03-23, starts at 2026-03-22T23:00Z (CET)
    assert in_window(at("2026-03-22T23:00:00Z"), "7d", as_of, berlin)
    assert not in_window(at("2026-03-22T22:59:59Z"), "7d", as_of, berlin)
    # in UTC the same instants fall differently
    assert in_window(at("2026-03-29T22:00:00Z"), "7d", as_of, UTC_SETTINGS)
    assert not in_window(at("2026-03-28T23:00:00Z"), "7d", at("2026-04-04T00:30:00Z"), UTC_SETTINGS)
    assert in_window(at("2026-03-28T23:00:00Z"), "7d", at("2026-04-04T00:30:00Z"), berlin)
    # the hour window is 24 real hours, across the missing hour
    assert in_window(at("2026-03-28T13:00:00Z"), "24h", as_of, berlin)
    assert not in_window(at("2026-03-28T12:59:59Z"), "24h", as_of, berlin)

    events = [
        E("lead.created", "a", "2026-03-29T21:59:59Z", lead_id="A"),
        E("lead.created", "b", "2026-03-29T22:00:00+00:00", lead_id="B"),
    ]
    assert doc(events, berlin, as_of)["windows"]["7d"]["total"]["leads"] == 1
    assert doc(events, UTC_SETTINGS, as_of)["windows"]["7d"]["total"]["leads"] == 2


def test_half_hour_timezone_hour_buckets() -> None:
    india = Settings(namespace="unit", timezone="Asia/Kolkata")
    as_of = at("2026-03-31T12:34:56Z")  # 18:04:56 IST: the hour bucket starts at 12:30Z
    assert in_window(at("2026-03-31T12:30:00Z"), "24h", as_of, india)
    assert not in_window(at("2026-03-31T13:30:00Z"), "24h", as_of, india)
    assert in_window(at("2026-03-30T13:30:00Z"), "24h", as_of, india)
    assert not in_window(at("2026-03-30T13:29:59Z"), "24h", as_of, india)


# ------------------------------------------------------------------ customer economics


ECONOMICS = [
    E("deal.won", "w1", "2026-02-20T00:00:00Z", deal_id="D1", customer_id="C1", rep_id="r", amount=100),
    E("deal.won", "w2", "2026-02-20T00:00:00Z", deal_id="D2", customer_id="C2", rep_id="r", amount=300),
    E("customer.churned", "ch", "2026-03-26T00:00:00Z", customer_id="C2"),
    E("revenue.recorded", "rv1", "2026-03-27T00:00:00Z", customer_id="C1", amount=1000, gross_margin=0.8),
    E("revenue.recorded", "rv2", "2026-03-28T00:00:00Z", customer_id="C1", amount=1000),
    E("spend.recorded", "sp1", "2026-03-28T00:00:00Z", amount=1300, category="marketing", source="web"),
    E("spend.recorded", "sp2", "2026-03-28T00:00:00Z", amount=100, category="sales", currency="USD"),
    E("survey.answered", "n1", "2026-03-29T00:00:00Z", kind="nps", score=10),
    E("survey.answered", "n2", "2026-03-29T00:00:00Z", kind="nps", score=9),
    E("survey.answered", "n3", "2026-03-29T00:00:00Z", kind="nps", score=7),
    E("survey.answered", "n4", "2026-03-29T00:00:00Z", kind="nps", score=3, customer_id="C1"),
    E("survey.answered", "q1", "2026-03-29T00:00:00Z", kind="csat", score=5),
    E("survey.answered", "q2", "2026-03-29T00:00:00Z", kind="csat", score=4),
    E("survey.answered", "q3", "2026-03-29T00:00:00Z", kind="csat", score=3),
]
ECONOMICS_SETTINGS = Settings(namespace="unit", default_gross_margin=0.5, currency_rates="USD=0.5")


def test_customer_economics() -> None:
    d = doc(ECONOMICS, ECONOMICS_SETTINGS)
    assert d["current"]["active_customers"] == 1
    total = d["windows"]["30d"]["total"]
    assert total["revenue_recorded"] == 2000.0
    assert total["gross_margin"] == approx(0.65)  # (800 + 500) / 2000
    assert total["churned_customers"] == 1
    assert total["churn_rate"] == 0.5  # 1 / (1 active now - 0 new + 1 churned)
    assert total["arpa"] == 2000.0
    assert total["ltv"] == approx(2000 * 0.65 / 0.5)
    assert total["spend"] == 1350.0
    assert (total["spend_marketing"], total["spend_sales"]) == (1300.0, 50.0)
    assert total["new_customers"] == 0 and total["cac"] is None and total["ltv_cac_ratio"] is None
    assert total["nps"] == 25.0
    assert total["csat"] == approx(2 / 3)
    assert sorted(d["windows"]["30d"]["by_source"]) == ["unknown", "web"]
    assert d["windows"]["30d"]["by_source"]["unknown"]["spend_sales"] == 50.0
    assert d["windows"]["30d"]["by_rep"] == {} and d["windows"]["30d"]["by_segment"] == {}
    # 90d: both customers are new and one churned: 1 - 2 + 1 = 0 active at the start
    ninety = d["windows"]["90d"]["total"]
    assert ninety["new_customers"] == 2
    assert ninety["churn_rate"] is None and ninety["ltv"] is None
    assert ninety["cac"] == 675.0


def test_no_churn_no_surveys() -> None:
    events = [
        E("deal.won", "w0", "2026-03-01T00:00:00Z", deal_id="D0", customer_id="C0", rep_id="r", amount=10),
        E("deal.won", "w", "2026-03-30T00:00:00Z", deal_id="D", customer_id="C", rep_id="r", amount=10),
        E("revenue.recorded", "rv", "2026-03-30T00:00:00Z", customer_id="C", amount=10),
    ]
    total = doc(events)["windows"]["7d"]["total"]
    assert total["churn_rate"] == 0.0  # 0 / (2 active - 1 new + 0 churned)
    assert total["ltv"] is None  # churn rate 0: no finite lifetime
    assert total["nps"] is None and total["csat"] is None
    assert total["gross_margin"] == 1.0 and total["arpa"] == 5.0
    assert total["sales_cycle_days"] is None and total["sales_velocity"] is None
    # 30d starts 03-02: 1 new of 2 active; all: 2 new of 2 active, no churn: 0 / 0
    assert doc(events)["windows"]["all"]["total"]["churn_rate"] is None


def test_zero_cac() -> None:
    events = [
        E("deal.won", "w0", "2026-03-01T00:00:00Z", deal_id="D0", customer_id="C0", rep_id="r", amount=10),
        E("deal.won", "wx", "2026-03-01T00:00:00Z", deal_id="DX", customer_id="CX", rep_id="r", amount=10),
        E("customer.churned", "ch", "2026-03-30T00:00:00Z", customer_id="CX"),
        E("deal.won", "w", "2026-03-30T00:00:00Z", deal_id="D", customer_id="C", rep_id="r", amount=10),
        E("revenue.recorded", "rv", "2026-03-30T00:00:00Z", customer_id="C", amount=10),
        E("spend.recorded", "sp", "2026-03-30T00:00:00Z", amount=0, category="sales", source="zero"),
    ]
    d = doc(events)
    total = d["windows"]["7d"]["total"]
    assert d["current"]["active_customers"] == 2
    assert total["churn_rate"] == 0.5  # 1 / (2 active - 1 new + 1 churned)
    assert total["ltv"] == 10.0  # arpa 5 x margin 1 / 0.5
    assert total["cac"] == 0.0 and total["ltv_cac_ratio"] is None
    # a spend of 0 is no contribution: its source is not listed
    assert "zero" not in d["windows"]["7d"]["by_source"]


def test_sales_velocity() -> None:
    events = [
        E("deal.created", "c1", "2026-03-10T00:00:00Z", deal_id="D1", rep_id="r", amount=1),
        E("deal.won", "w1", "2026-03-20T00:00:00Z", deal_id="D1", customer_id="C", rep_id="r", amount=1000),
        E("deal.lost", "l2", "2026-03-20T00:00:00Z", deal_id="D2", rep_id="r"),
        E("deal.created", "c3", "2026-03-10T00:00:00Z", deal_id="D3", rep_id="r", amount=1),
        E("deal.created", "c4", "2026-03-10T00:00:00Z", deal_id="D4", rep_id="r", amount=1),
    ]
    total = doc(events)["windows"]["30d"]["total"]
    # 2 open deals x 0.5 win rate x 1000 average / 10 days
    assert total["sales_velocity"] == 100.0


def test_negative_sales_cycle_is_kept() -> None:
    events = [
        E("deal.created", "c", "2026-03-30T00:00:00Z", deal_id="D", rep_id="r", amount=1),
        E("deal.won", "w", "2026-03-29T12:00:00Z", deal_id="D", customer_id="C", rep_id="r", amount=1),
    ]
    total = doc(events)["windows"]["7d"]["total"]
    assert total["sales_cycle_days"] == -0.5
    assert total["sales_velocity"] is None


# ------------------------------------------------------------------ duplicates and conflicts


def test_duplicates_and_conflicts_keep_the_first() -> None:
    events = [
        E("lead.created", "a", "2026-03-30T00:00:00Z", lead_id="L", source="web"),
        E("lead.created", "b", "2026-03-30T00:00:00Z", lead_id="L", source="ads"),  # conflict
        E("lead.created", "a", "2026-03-30T00:00:00Z", lead_id="L2", source="ads"),  # duplicate id
        E("lead.created", "b", "2026-03-30T00:00:00Z", lead_id="L3", source="tv"),  # "b" was not applied
        E("deal.created", "c1", "2026-03-30T00:00:00Z", deal_id="D", rep_id="r", amount=1),
        E("deal.created", "c2", "2026-03-30T00:00:00Z", deal_id="D", rep_id="s", amount=9),  # conflict
    ]
    window = doc(events)["windows"]["7d"]
    assert window["total"]["leads"] == 2
    assert sorted(window["by_source"]) == ["tv", "unknown", "web"]
    assert window["total"]["deals_created"] == 1
    assert sorted(window["by_rep"]) == ["r", "unassigned"]
    assert doc(events)["current"]["pipeline"]["value"] == 1.0


def test_a_second_terminal_event_is_no_conflict() -> None:
    t = "2026-03-30T00:00:00Z"
    won = E("deal.won", "w", t, deal_id="D", customer_id="C", rep_id="r", amount=1)
    lost = E("deal.lost", "x", t, deal_id="D", rep_id="r")
    # Same instant: the later event_id ("x") is the outcome event, in either order.
    for events in ([won, lost], [lost, won]):
        total = doc(events)["windows"]["7d"]["total"]
        assert (total["deals_won"], total["deals_lost"]) == (0, 1)


def test_differences_helper() -> None:
    assert differences({"a": 1.0, "b": None}, {"a": 1.0 + 1e-12, "b": None}) == []
    assert differences({"a": 1}, {"a": 1.0})  # a count must not be a float
    assert differences({"a": 1}, {"a": 1, "b": 2}) == ["$.b: missing (expected 2)"]
    assert differences({"a": None}, {"a": 0.0})
    assert_documents_match({"x": {"y": [1]}}, {"x": {"y": [1]}})


# ------------------------------------------------------------------ contract v2: corrections


def parsed_scenarios(settings: Settings) -> tuple[list[Event], dict[str, str]]:
    """The hand-worked scenarios through the parser: the valid events, and the refused ids."""
    parser = EventParser(settings)
    now = datetime.now(UTC)
    events: list[Event] = []
    refused: dict[str, str] = {}
    for raw in scenarios.EVENTS:
        outcome = parser.parse_object(raw, now)
        if isinstance(outcome, Rejection):
            refused[raw["event_id"]] = outcome.reason
        else:
            events.append(outcome)
    return events, refused


def test_hand_worked_scenarios_in_any_order() -> None:
    settings = Settings(namespace="unit", currency_rates=scenarios.RATES)
    events, refused = parsed_scenarios(settings)
    assert refused == {"s14-u": "missing_field"}  # the conflict is the store's to refuse
    rng = random.Random(7)
    for _ in range(20):
        order = rng.sample(events, len(events))
        order += rng.sample(order, 10)  # retries
        document = reference_document(order, settings, scenarios.AS_OF)
        assert scenarios.mismatches(document) == []


def test_a_lead_is_its_stated_attributes_even_without_lead_created() -> None:
    events = [
        E("lead.updated", "u", "2026-03-28T00:00:00Z", lead_id="L", source="web", rep_id="ann"),
        E("lead.qualified", "q", "2026-03-29T00:00:00Z", lead_id="L"),
    ]
    window = doc(events)["windows"]["7d"]
    assert (window["total"]["leads"], window["total"]["qualified_leads"]) == (0, 1)
    assert list(window["by_source"]) == ["web"] and list(window["by_rep"]) == ["ann"]
    assert list(window["by_segment"]) == ["unknown"]
    # lead.created states all three: its absent source is "unknown", and it is the later statement.
    created = E("lead.created", "c", "2026-03-29T00:00:00Z", lead_id="L", segment="smb")
    window = doc([*events, created])["windows"]["7d"]
    assert window["total"]["leads"] == 1
    assert list(window["by_source"]) == ["unknown"] and list(window["by_rep"]) == ["unassigned"]
    assert list(window["by_segment"]) == ["smb"]


def test_reopening_the_first_win_moves_the_conversion_and_the_new_customer() -> None:
    events = [
        E("lead.created", "l", "2026-03-01T00:00:00Z", lead_id="L", source="web"),
        E(
            "deal.won",
            "w1",
            "2026-03-26T00:00:00Z",
            deal_id="D1",
            customer_id="C",
            rep_id="a",
            amount=1,
            lead_id="L",
        ),
        E(
            "deal.won",
            "w2",
            "2026-03-28T00:00:00Z",
            deal_id="D2",
            customer_id="C",
            rep_id="b",
            amount=2,
            lead_id="L",
        ),
    ]
    reopen = E("deal.reopened", "r", "2026-03-30T00:00:00Z", deal_id="D1", rep_id="c")
    window = doc(events)["windows"]["7d"]
    assert window["by_rep"]["a"]["new_customers"] == 1 and window["by_rep"]["b"]["new_customers"] == 0
    window = doc([*events, reopen])["windows"]["7d"]
    assert window["total"]["lead_conversions"] == 1 and window["total"]["new_customers"] == 1
    assert window["by_rep"]["b"]["new_customers"] == 1
    assert "a" not in window["by_rep"] and "c" not in window["by_rep"]  # D1 is open, c's, and uncreated
    assert window["total"]["deals_won"] == 1 and window["total"]["revenue_won"] == 2.0
    # Reopen the other one too: no conversion, no customer, the cohort conversion is gone.
    reopen2 = E("deal.reopened", "r2", "2026-03-30T00:00:00Z", deal_id="D2")
    d = doc([*events, reopen, reopen2])
    assert d["windows"]["all"]["total"]["lead_conversions"] == 0
    assert d["windows"]["all"]["total"]["cohort_conversions"] == 0
    assert d["current"]["active_customers"] == 0


def test_stage_is_the_latest_statement_and_a_bare_reopen_keeps_it() -> None:
    events = [
        E("deal.created", "c", "2026-03-20T00:00:00Z", deal_id="D", amount=10, stage="proposal"),
        E("deal.won", "w", "2026-03-21T00:00:00Z", deal_id="D", customer_id="C", rep_id="r", amount=10),
        E("deal.reopened", "r", "2026-03-22T00:00:00Z", deal_id="D"),
    ]
    by_stage = doc(events)["current"]["pipeline"]["by_stage"]
    assert by_stage["proposal"] == {"open_deals": 1, "value": 10.0}
    moved = E("deal.reopened", "r2", "2026-03-23T00:00:00Z", deal_id="D", stage="negotiation")
    d = doc([*events, moved])
    assert d["current"]["pipeline"]["by_stage"]["negotiation"] == {"open_deals": 1, "value": 10.0}
    # A reopen is no stage entry; the won entry is gone with the win.
    assert d["windows"]["30d"]["total"]["stage_entries"] == {
        "prospecting": 0,
        "qualification": 0,
        "proposal": 1,
        "negotiation": 0,
        "won": 0,
    }


def test_currency_statements() -> None:
    settings = Settings(namespace="unit", currency_rates="USD=0.5,GBP=2")
    created = E("deal.created", "c", "2026-03-20T00:00:00Z", deal_id="D", amount=100, currency="GBP")

    def value(*later: Event) -> float:
        pipeline = doc([created, *later], settings)["current"]["pipeline"]
        return float(pipeline["value"])

    assert value() == 200.0
    to_usd = E("deal.updated", "u", "2026-03-21T00:00:00Z", deal_id="D", currency="USD")
    assert value(to_usd) == 50.0  # the same 100, in USD now
    to_eur = E("deal.updated", "u2", "2026-03-22T00:00:00Z", deal_id="D", currency="EUR")
    assert value(to_usd, to_eur) == 100.0
    # A currency edit older than the amount statement changes nothing.
    early = E("deal.updated", "u0", "2026-03-19T00:00:00Z", deal_id="D", currency="USD")
    assert value(early) == 200.0
    # A later amount without currency is in the reporting currency.
    amount = E("deal.updated", "a", "2026-03-23T00:00:00Z", deal_id="D", amount=70)
    assert value(to_usd, amount) == 70.0
    # ... and a currency on an event that states no amount states nothing.
    moved = E(
        "deal.stage_changed", "s", "2026-03-24T00:00:00Z", deal_id="D", to_stage="proposal", currency="USD"
    )
    assert value(amount, moved) == 70.0


def test_a_deal_without_amount_is_worth_nothing() -> None:
    events = [E("deal.created", "c", "2026-03-20T00:00:00Z", deal_id="D")]
    d = doc(events)
    assert d["current"]["pipeline"]["by_stage"]["prospecting"] == {"open_deals": 1, "value": 0.0}
    assert list(d["windows"]["30d"]["by_rep"]) == ["unassigned"]


def test_deleted_deal_counts_nothing_and_a_restore_brings_it_back() -> None:
    events = [
        E("deal.created", "c", "2026-03-20T00:00:00Z", deal_id="D", rep_id="r", amount=5),
        E("deal.stage_changed", "s", "2026-03-21T00:00:00Z", deal_id="D", to_stage="proposal", rep_id="m"),
        E("deal.won", "w", "2026-03-22T00:00:00Z", deal_id="D", customer_id="C", rep_id="r", amount=5),
    ]
    deleted = E("deal.deleted", "d", "2026-03-23T00:00:00Z", deal_id="D")
    d = doc([*events, deleted])
    window = d["windows"]["all"]
    assert window["by_rep"] == {} and window["by_source"] == {}
    assert sum(window["total"]["stage_entries"].values()) == 0
    assert d["current"]["active_customers"] == 0
    # Restored later: all back. Restored earlier than the deletion: still deleted.
    restored = E("deal.restored", "x", "2026-03-24T00:00:00Z", deal_id="D")
    assert doc([*events, deleted, restored]) == doc(events)
    stale = E("deal.restored", "x", "2026-03-22T12:00:00Z", deal_id="D")
    assert doc([*events, stale, deleted])["windows"]["all"]["by_rep"] == {}


def test_deleted_lead_counts_nothing_and_its_deals_lose_their_source() -> None:
    events = [
        E("lead.created", "l", "2026-03-20T00:00:00Z", lead_id="L", source="web", rep_id="o"),
        E("lead.qualified", "q", "2026-03-21T00:00:00Z", lead_id="L"),
        E(
            "deal.won",
            "w",
            "2026-03-22T00:00:00Z",
            deal_id="D",
            customer_id="C",
            rep_id="r",
            amount=5,
            lead_id="L",
        ),
        E("lead.deleted", "d", "2026-03-23T00:00:00Z", lead_id="L"),
    ]
    window = doc(events)["windows"]["all"]
    assert list(window["by_source"]) == ["unknown"] and list(window["by_rep"]) == ["r"]
    total = window["total"]
    assert (total["leads"], total["qualified_leads"], total["lead_conversions"]) == (0, 0, 0)
    assert (total["deals_won"], total["new_customers"]) == (1, 1)
    restored = E("lead.restored", "x", "2026-03-24T00:00:00Z", lead_id="L")
    window = doc([*events, restored])["windows"]["all"]
    assert window["by_source"]["web"]["lead_conversions"] == 1
    assert window["by_source"]["web"]["deals_won"] == 1
