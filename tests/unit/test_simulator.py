"""The CRM simulator: format (DESIGN section 2), entity consistency, realism, determinism, live stepping."""

from __future__ import annotations

import math
import re
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from kpi_app.simulation import LiveSimulator, SimConfig, scaled_for_rate, simulate_history
from kpi_state.events import EventParser, Rejection
from kpi_state.settings import Settings

Event = dict[str, object]

START = datetime(2026, 1, 5, 0, 0, tzinfo=UTC)  # a Monday
DAYS = 75
STAGES = SimConfig().stages
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,3})?Z$")

# DESIGN section 2: the fields each type requires, and the optional ones the simulator may send.
REQUIRED = {
    "lead.created": {"lead_id"},
    "lead.qualified": {"lead_id"},
    "deal.created": {"deal_id", "rep_id", "amount"},
    "deal.stage_changed": {"deal_id", "to_stage"},
    "deal.won": {"deal_id", "customer_id", "rep_id", "amount"},
    "deal.lost": {"deal_id", "rep_id"},
    "spend.recorded": {"amount", "category"},
    "revenue.recorded": {"customer_id", "amount"},
    "customer.churned": {"customer_id"},
    "survey.answered": {"kind", "score"},
    "lead.updated": {"lead_id"},
    "lead.deleted": {"lead_id"},
    "deal.updated": {"deal_id"},
    "deal.reopened": {"deal_id"},
    "deal.deleted": {"deal_id"},
    "deal.restored": {"deal_id"},
}
CORRECTIONS = (
    "lead.updated",
    "lead.deleted",
    "deal.updated",
    "deal.reopened",
    "deal.deleted",
    "deal.restored",
)
OPTIONAL = {
    "lead.created": {"source", "segment", "rep_id"},
    "lead.qualified": set(),
    "deal.created": {"lead_id", "stage"},
    "deal.stage_changed": {"from_stage", "rep_id", "amount"},
    "deal.won": {"lead_id"},
    "deal.lost": {"lead_id", "reason"},
    "spend.recorded": {"source"},
    "revenue.recorded": {"gross_margin"},
    "customer.churned": set(),
    "survey.answered": {"customer_id"},
    "lead.updated": {"source", "segment", "rep_id"},
    "lead.deleted": set(),
    "deal.updated": {"rep_id", "amount", "lead_id"},
    "deal.reopened": {"stage", "rep_id"},
    "deal.deleted": set(),
    "deal.restored": set(),
}


def at(event: Event) -> datetime:
    return datetime.fromisoformat(str(event["occurred_at"]))


def num(event: Event, field: str) -> float:
    value = event[field]
    assert isinstance(value, int | float) and not isinstance(value, bool)
    return float(value)


def of_type(events: list[Event], kind: str) -> list[Event]:
    return [e for e in events if e["type"] == kind]


def in_days(events: list[Event], first: int, last: int) -> list[Event]:
    """Events on days ``first <= day < last`` after START."""
    lo, hi = START + timedelta(days=first), START + timedelta(days=last)
    return [e for e in events if lo <= at(e) < hi]


@pytest.fixture(scope="module")
def history() -> list[Event]:
    return list(simulate_history(SimConfig(), start=START, end=START + timedelta(days=DAYS)))


def test_same_seed_same_history_other_seed_other_history() -> None:
    end = START + timedelta(days=5)
    first = list(simulate_history(SimConfig(seed=3), start=START, end=end))
    assert first == list(simulate_history(SimConfig(seed=3), start=START, end=end))
    assert first != list(simulate_history(SimConfig(seed=4), start=START, end=end))


def test_a_longer_history_extends_a_shorter_one() -> None:
    short = list(simulate_history(SimConfig(), start=START, end=START + timedelta(days=3)))
    longer = list(simulate_history(SimConfig(), start=START, end=START + timedelta(days=6)))
    assert longer[: len(short)] == short
    assert len(longer) > len(short)


def test_events_are_sorted_and_inside_the_interval() -> None:
    start = datetime(2026, 3, 2, 9, 15, 30, 123_456, tzinfo=UTC)
    end = datetime(2026, 3, 9, 17, 45, 0, 999_999, tzinfo=UTC)
    events = list(simulate_history(SimConfig(seed=9), start=start, end=end))
    assert events
    stamps = [str(e["occurred_at"]) for e in events]
    assert all(TIMESTAMP.match(s) for s in stamps)
    times = [at(e) for e in events]
    assert times == sorted(times)
    assert start <= times[0] and times[-1] < end
    assert stamps == sorted(stamps)  # fixed width: text order is time order


def test_every_event_has_its_design_fields_and_passes_the_parser(history: list[Event]) -> None:
    parser = EventParser(Settings(stages=",".join(STAGES)))
    now = START + timedelta(days=DAYS)
    assert set(Counter(e["type"] for e in history)) == set(REQUIRED)
    parsed: Counter[str] = Counter()
    for event in history:
        kind = str(event["type"])
        fields = set(event) - {"event_id", "type", "occurred_at"}
        assert REQUIRED[kind] <= fields, event
        assert fields <= REQUIRED[kind] | OPTIONAL[kind], event
        if parsed[kind] < 500:  # the project's own validation, on a sample of every type
            parsed[kind] += 1
            assert not isinstance(parser.parse_object(event, now), Rejection), event
        for name in ("event_id", "lead_id", "deal_id", "customer_id"):
            if name in event:
                assert isinstance(event[name], str) and 1 <= len(event[name]) <= 128  # type: ignore[arg-type]
        if "amount" in event:
            amount = num(event, "amount")
            assert math.isfinite(amount) and amount >= 0 and round(amount, 2) == amount
        for stage_field in ("stage", "from_stage", "to_stage"):
            if stage_field in event:
                assert event[stage_field] in STAGES
        if kind == "survey.answered":
            low, high = (0, 10) if event["kind"] == "nps" else (1, 5)
            assert event["kind"] in ("nps", "csat") and type(event["score"]) is int
            assert low <= event["score"] <= high
        if kind == "revenue.recorded":
            assert 0.6 <= num(event, "gross_margin") <= 0.85
        if kind == "spend.recorded":
            assert event["category"] in ("marketing", "sales")


def test_event_ids_are_unique(history: list[Event]) -> None:
    ids = [e["event_id"] for e in history]
    assert len(set(ids)) == len(ids)


def test_entities_have_consistent_life_cycles(history: list[Event]) -> None:
    leads: set[object] = set()
    duplicates: set[object] = set()  # second records of a lead, merged away later
    qualified: set[object] = set()
    deal_stage: dict[object, object] = {}  # open deals and their current stage
    closed: set[object] = set()
    deals: set[object] = set()
    deal_customer: dict[object, object] = {}
    customers: set[object] = set()
    churned: set[object] = set()
    for e in history:
        kind = e["type"]
        if kind == "lead.created":
            assert e["lead_id"] not in leads
            leads.add(e["lead_id"])
            if str(e["lead_id"]).endswith("-dup"):
                assert str(e["lead_id"]).removesuffix("-dup") in leads
                duplicates.add(e["lead_id"])
        elif kind == "lead.qualified":
            assert e["lead_id"] in leads and e["lead_id"] not in qualified
            qualified.add(e["lead_id"])
        elif kind == "lead.updated":
            assert e["lead_id"] in leads and set(e) - {"event_id", "type", "occurred_at", "lead_id"}
        elif kind == "lead.deleted":  # a merge: only duplicates are deleted
            assert e["lead_id"] in duplicates
            duplicates.remove(e["lead_id"])
        elif kind == "deal.created":
            assert e["deal_id"] not in deals
            assert e["lead_id"] in qualified or e["lead_id"] in duplicates
            assert e["stage"] == STAGES[0]
            deal_stage[e["deal_id"]] = e["stage"]
            deals.add(e["deal_id"])
        elif kind == "deal.stage_changed":
            assert deal_stage[e["deal_id"]] == e["from_stage"] != e["to_stage"]
            deal_stage[e["deal_id"]] = e["to_stage"]
        elif kind in ("deal.won", "deal.lost"):
            assert e["deal_id"] in deal_stage, "won or lost without being open"
            del deal_stage[e["deal_id"]]
            closed.add(e["deal_id"])
            if kind == "deal.won":
                again = e["deal_id"] in deal_customer  # won again after a reopen: the same customer
                assert (e["customer_id"] in customers) == again
                assert deal_customer.setdefault(e["deal_id"], e["customer_id"]) == e["customer_id"]
                customers.add(e["customer_id"])
        elif kind == "deal.reopened":
            assert e["deal_id"] in closed and e["deal_id"] not in deal_stage
            closed.remove(e["deal_id"])
            deal_stage[e["deal_id"]] = e["stage"]
        elif kind in ("deal.updated", "deal.deleted", "deal.restored"):
            assert e["deal_id"] in deals
            if "lead_id" in e:  # a re-link by a merge: to the lead itself
                assert e["lead_id"] in qualified
        elif kind == "revenue.recorded":
            assert e["customer_id"] in customers and e["customer_id"] not in churned
        elif kind == "customer.churned":
            assert e["customer_id"] in customers and e["customer_id"] not in churned
            churned.add(e["customer_id"])
        elif kind == "survey.answered" and "customer_id" in e:
            assert e["customer_id"] in customers
    # Deals whose outcome falls after the end stay open, at every stage.
    assert set(deal_stage.values()) == set(STAGES)
    assert len(customers) > len(churned) > 0


def test_corrections_come_at_realistic_rates_and_can_be_turned_off(history: list[Event]) -> None:
    kinds = Counter(e["type"] for e in history)
    won, created, leads = kinds["deal.won"], kinds["deal.created"], kinds["lead.created"]
    assert 0.01 * leads < kinds["lead.updated"] < 0.06 * leads
    assert 0.005 * created < kinds["deal.deleted"] < 0.05 * created or kinds["deal.deleted"] >= 1
    assert 0 < kinds["deal.reopened"] < 0.08 * won
    updates = [e for e in history if e["type"] == "deal.updated"]
    assert {"rep_id", "amount", "lead_id"} <= {k for e in updates for k in e}
    end = START + timedelta(days=DAYS)
    plain = list(simulate_history(SimConfig(corrections=False), start=START, end=end))
    assert not {e["type"] for e in plain} & set(CORRECTIONS)

    # The corrections draw from their own random stream: the rest of the history is the same.
    def shape(events: list[Event]) -> list[tuple[object, ...]]:
        kinds = ("lead.created", "lead.qualified", "spend.recorded", "survey.answered")
        return [
            (e["type"], e["occurred_at"], e.get("lead_id"), e.get("amount"), e.get("score"))
            for e in events
            if e["type"] in kinds and not str(e.get("lead_id", "")).endswith("-dup")
        ]

    assert shape(history) == shape(plain)


def test_volumes_and_mix_are_realistic(history: list[Event]) -> None:
    last30 = in_days(history, DAYS - 28, DAYS)  # four whole weeks
    per_day = Counter(e["type"] for e in last30)
    assert 800 <= len(last30) / 28 <= 1500
    leads = per_day["lead.created"]
    assert 100 <= leads / 28 <= 140
    assert 0.3 <= per_day["lead.qualified"] / leads <= 0.65
    assert 0.03 <= per_day["deal.won"] / leads <= 0.15
    assert 0.15 <= per_day["deal.won"] / (per_day["deal.won"] + per_day["deal.lost"]) <= 0.35
    weekdays = Counter(at(e).weekday() for e in of_type(last30, "lead.created"))
    assert min(weekdays[d] for d in range(5)) > 2 * max(weekdays[5], weekdays[6])
    sources = Counter(e["source"] for e in of_type(history, "lead.created"))
    assert set(sources) == {"web", "paid_search", "referral", "events", "outbound", "partner"}
    assert sources["web"] > 2 * sources["referral"]
    segments = Counter(e.get("segment") for e in of_type(history, "lead.created"))
    assert segments["smb"] > segments["mid_market"] > segments["enterprise"] > 0
    assert {e.get("rep_id") for e in history} - {None} == {
        "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"
    }  # fmt: skip
    spend = Counter((e["category"], e.get("source")) for e in of_type(history, "spend.recorded"))
    assert ("sales", None) in spend and ("marketing", "paid_search") in spend


def test_deal_sizes_and_cycles_differ_by_segment(history: list[Event]) -> None:
    segment = {e["lead_id"]: e.get("segment") for e in of_type(history, "lead.created")}
    created = {e["deal_id"]: e for e in of_type(history, "deal.created")}
    sizes: dict[object, list[float]] = {}
    cycles: dict[object, list[float]] = {}
    for deal in created.values():
        sizes.setdefault(segment[deal["lead_id"]], []).append(num(deal, "amount"))
    for won in of_type(history, "deal.won"):
        deal = created[won["deal_id"]]
        cycles.setdefault(segment[deal["lead_id"]], []).append((at(won) - at(deal)).total_seconds() / 86_400)
    mean_size = {k: sum(v) / len(v) for k, v in sizes.items()}
    assert mean_size["smb"] < mean_size["mid_market"] < mean_size["enterprise"]
    mean_cycle = {k: sum(v) / len(v) for k, v in cycles.items()}
    assert 5 <= mean_cycle["smb"] < mean_cycle["mid_market"] <= 60  # days to weeks
    assert min(min(v) for v in cycles.values()) > 0


def test_survey_scores_look_like_real_ones(history: list[Event]) -> None:
    surveys = of_type(history, "survey.answered")
    nps = [num(e, "score") for e in surveys if e["kind"] == "nps"]
    csat = [num(e, "score") for e in surveys if e["kind"] == "csat"]
    promoters, detractors = sum(s >= 9 for s in nps), sum(s <= 6 for s in nps)
    assert 10 <= 100 * (promoters - detractors) / len(nps) <= 50
    assert 0.7 <= sum(s >= 4 for s in csat) / len(csat) <= 0.9
    assert any("customer_id" in e for e in surveys) and any("customer_id" not in e for e in surveys)


def test_conversion_drop_lowers_qualification_and_conversion_from_its_time(history: list[Event]) -> None:
    drop_at = START + timedelta(days=42)  # a Monday
    dropped = list(
        simulate_history(
            SimConfig(conversion_drop=True, drop_at=drop_at), start=START, end=START + timedelta(days=DAYS)
        )
    )
    before = [e for e in history if at(e) < drop_at]
    assert dropped[: len(before)] == before  # the same world until the drop

    def rates(events: list[Event]) -> tuple[float, float]:
        window = in_days(events, 44, DAYS)
        kinds = Counter(e["type"] for e in window)
        return kinds["lead.qualified"] / kinds["lead.created"], kinds["deal.won"] / kinds["lead.created"]

    (qual, conv), (qual_drop, conv_drop) = rates(history), rates(dropped)
    assert qual_drop < 0.5 * qual
    assert conv_drop < 0.6 * conv
    # Wins fall from the first week on: an alert on a short window fires.
    first_days = [in_days(x, 42, 47) for x in (history, dropped)]
    assert len(of_type(first_days[1], "deal.won")) < 0.7 * len(of_type(first_days[0], "deal.won"))


def test_conversion_drop_without_a_time_applies_from_the_start() -> None:
    end = START + timedelta(days=10)
    normal = list(simulate_history(SimConfig(), start=START, end=end))
    dropped = list(simulate_history(SimConfig(conversion_drop=True), start=START, end=end))
    qualified = [
        len(of_type(x, "lead.qualified")) / len(of_type(x, "lead.created")) for x in (normal, dropped)
    ]
    assert qualified[1] < 0.5 * qualified[0]


def test_live_steps_give_exactly_the_history() -> None:
    config = SimConfig(seed=5)
    start = datetime(2026, 2, 1, 7, 30, 0, 250_000, tzinfo=UTC)
    end = start + timedelta(days=4)
    live, got, t = LiveSimulator(config), [], start
    while t < end:  # odd step sizes, crossing chunk and day boundaries anywhere
        step_end = min(end, t + timedelta(minutes=17, milliseconds=3))
        got += live.events_between(t, step_end)
        t = step_end
    assert got == list(simulate_history(config, start=start, end=end))


def test_live_overlaps_are_not_repeated_and_gaps_are_skipped() -> None:
    sim = LiveSimulator(SimConfig())
    t0 = START
    first = sim.events_between(t0, t0 + timedelta(hours=12))
    again = sim.events_between(t0 + timedelta(hours=6), t0 + timedelta(hours=13))
    assert {e["event_id"] for e in first}.isdisjoint(e["event_id"] for e in again)
    assert all(at(e) >= t0 + timedelta(hours=12) for e in again)
    later = sim.events_between(t0 + timedelta(hours=20), t0 + timedelta(hours=24))
    assert later and all(at(e) >= t0 + timedelta(hours=20) for e in later)
    assert sim.events_between(t0, t0 + timedelta(hours=1)) == []


def test_live_rate_at_100ms_steps_follows_scaled_for_rate() -> None:
    rate = 50.0
    config = scaled_for_rate(SimConfig(time_scale=1440), rate)
    sim = LiveSimulator(config)
    now = datetime(2026, 3, 4, 3, 0, tzinfo=UTC)  # night: a compressed run has no business hours
    sim.events_between(now - timedelta(minutes=20), now)  # backfill: 20 CRM days fill the funnel
    tick = timedelta(milliseconds=100)
    counts = [len(sim.events_between(now + i * tick, now + (i + 1) * tick)) for i in range(300)]  # 30 s
    assert 0.75 * rate <= sum(counts) / 30 <= 1.25 * rate
    assert sum(c > 0 for c in counts) > 250  # a steady stream, not bursts
    assert sim.active_customers > 0


def test_scaled_for_rate_matches_the_daily_volume(history: list[Event]) -> None:
    per_second = len(in_days(history, DAYS - 28, DAYS)) / (28 * 86_400)
    assert scaled_for_rate(SimConfig(), per_second).leads_per_day == pytest.approx(120, rel=0.25)
    assert scaled_for_rate(SimConfig(seed=2, reps=3), 10).seed == 2


def test_configured_stages_and_reps_are_used() -> None:
    config = SimConfig(reps=30, stages=("new", "demo", "contract"))
    events = list(simulate_history(config, start=START, end=START + timedelta(days=30)))
    stages = {e[f] for e in events for f in ("stage", "from_stage", "to_stage") if f in e}
    assert stages == {"new", "demo", "contract"}
    reps = {e["rep_id"] for e in events if "rep_id" in e}
    assert len(reps) == 30
    one_stage = SimConfig(stages=("open",))
    events = list(simulate_history(one_stage, start=START, end=START + timedelta(days=25)))
    assert of_type(events, "deal.won") and not of_type(events, "deal.stage_changed")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"reps": 0},
        {"stages": ()},
        {"stages": ("a", "a")},
        {"stages": ("won",)},
        {"leads_per_day": -1.0},
        {"time_scale": 0.0},
        {"drop_at": datetime(2026, 1, 1)},
    ],
)
def test_bad_configs_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"."):
        SimConfig(**kwargs)  # type: ignore[arg-type]


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        list(simulate_history(SimConfig(), start=datetime(2026, 1, 1), end=datetime(2026, 1, 2)))
