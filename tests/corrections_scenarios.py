"""Held-out, hand-worked scenarios of contract v2 (DESIGN section 2 "Corrections").

Every rule of docs/corrections.md in one set of events with distinct ids, and the KPIs counted by
hand from the rules (not from any code): ``EXPECTED`` per window, ``PIPELINE``, ``ACTIVE``.
The unit tests check the reference against these numbers; the integration test replays the set
with ``kpi replay`` in shuffled orders with retries and checks the store against them.

All events at 12:00 UTC; read at ``AS_OF`` (2026-03-31T12:00Z): ``30d`` is 03-02..03-31 and
``7d`` 03-25..03-31 (UTC days). ``USD`` is worth 0.5 (``RATES``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

AS_OF = datetime(2026, 3, 31, 12, 0, tzinfo=UTC)
RATES = "USD=0.5"


def day(d: int, month: int = 3) -> str:
    return f"2026-{month:02d}-{d:02d}T12:00:00Z"


def ev(event_type: str, event_id: str, at: str, /, **fields: Any) -> dict[str, Any]:
    return {"event_id": event_id, "type": event_type, "occurred_at": at, **fields}


# Each scenario: a name and its events. Reps, sources and customers are mostly its own, so that
# what a correction takes away shows as a missing key in by_rep/by_source.
SCENARIOS: dict[str, list[dict[str, Any]]] = {
    # olga wins for 1000, the deal is reopened, bob wins it again for 1500: one win, bob's, 1500,
    # at bob's win (its creation and its stage entry are bob's too: he is the owner now).
    "reopen and re-win by another rep for more": [
        ev("deal.created", "s1-c", day(20, 2), deal_id="D1", rep_id="olga", amount=1000),
        ev("deal.won", "s1-w1", day(10), deal_id="D1", customer_id="C1", rep_id="olga", amount=1000),
        ev("deal.reopened", "s1-r", day(15), deal_id="D1"),
        ev("deal.won", "s1-w2", day(28), deal_id="D1", customer_id="C1", rep_id="bob", amount=1500),
    ],
    # Won, then lost: one lost deal, no win, C2 is no customer.
    "won then lost": [
        ev("deal.created", "s2-c", day(5), deal_id="D2", rep_id="carol", amount=200, stage="proposal"),
        ev("deal.won", "s2-w", day(20), deal_id="D2", customer_id="C2", rep_id="carol", amount=200),
        ev("deal.lost", "s2-l", day(26), deal_id="D2", rep_id="carol"),
    ],
    # Lost, then reopened into negotiation: open in the pipeline (a reopen is no stage entry).
    "reopen into the pipeline": [
        ev("deal.created", "s3-c", day(3), deal_id="D3", rep_id="dave", amount=300, stage="qualification"),
        ev("deal.lost", "s3-l", day(10), deal_id="D3", rep_id="dave"),
        ev("deal.reopened", "s3-r", day(26), deal_id="D3", stage="negotiation"),
    ],
    # Won for 400, corrected to 450 after the signature: 450 at the win. The stage change names
    # no rep: it is the owner's.
    "amount corrected after the win": [
        ev("deal.created", "s4-c", day(12), deal_id="D4", rep_id="erin", amount=400),
        ev("deal.stage_changed", "s4-s", day(20), deal_id="D4", to_stage="negotiation"),
        ev("deal.won", "s4-w", day(25), deal_id="D4", customer_id="C4", rep_id="erin", amount=400),
        ev("deal.updated", "s4-u", day(29), deal_id="D4", amount=450),
        ev("customer.churned", "s4-ch", day(30), customer_id="C4"),
    ],
    # pete's open deal, moved on by alice, reassigned at one instant to zed and frank: the later
    # event_id ("s5-u-b") wins, so frank owns the deal; alice keeps the stage entry she made.
    "open deal reassigned": [
        ev("deal.created", "s5-c", day(20), deal_id="D5", rep_id="pete", amount=500, stage="proposal"),
        ev("deal.stage_changed", "s5-s", day(22), deal_id="D5", to_stage="negotiation", rep_id="alice"),
        ev("deal.updated", "s5-u-a", day(27), deal_id="D5", rep_id="zed"),
        ev("deal.updated", "s5-u-b", day(27), deal_id="D5", rep_id="frank"),
    ],
    # A won deal deleted: nothing at all is left (mona and C6 vanish).
    "won deal deleted": [
        ev("deal.created", "s6-c", day(8), deal_id="D6", rep_id="mona", amount=600),
        ev("deal.won", "s6-w", day(26), deal_id="D6", customer_id="C6", rep_id="mona", amount=600),
        ev("deal.deleted", "s6-d", day(29), deal_id="D6"),
    ],
    # Won, deleted, restored: everything is back.
    "deal deleted then restored": [
        ev("deal.created", "s7-c", day(9), deal_id="D7", rep_id="carol", amount=700),
        ev("deal.won", "s7-w", day(27), deal_id="D7", customer_id="C7", rep_id="carol", amount=700),
        ev("deal.deleted", "s7-d", day(28), deal_id="D7"),
        ev("deal.restored", "s7-rs", day(30), deal_id="D7"),
    ],
    # The lead came from ads, corrected to web: the lead and its deal count for web only.
    "lead source corrected": [
        ev("lead.created", "s8-l", day(10), lead_id="L8", source="ads", segment="smb", rep_id="gina"),
        ev("lead.qualified", "s8-q", day(11), lead_id="L8"),
        ev("lead.updated", "s8-lu", day(12), lead_id="L8", source="web"),
        ev("deal.created", "s8-c", day(11), deal_id="D8", rep_id="gina", amount=800, lead_id="L8"),
        ev("deal.won", "s8-w", day(27), deal_id="D8", customer_id="C8", rep_id="gina", amount=800),
    ],
    # The lead (nina's, partner) is deleted: no lead KPI; its won deal stays, with no known lead.
    "lead deleted": [
        ev("lead.created", "s9-l", day(4), lead_id="L9", source="partner", segment="ent", rep_id="nina"),
        ev("deal.created", "s9-c", day(5), deal_id="D9", rep_id="hank", amount=900, lead_id="L9"),
        ev("deal.won", "s9-w", day(26), deal_id="D9", customer_id="C9", rep_id="hank", amount=900),
        ev("lead.deleted", "s9-ld", day(28), lead_id="L9"),
    ],
    # A bare deal.created, given an owner, then an amount and a lead by later updates.
    "bare deal.created filled by later updates": [
        ev("lead.created", "s10-l", day(17), lead_id="L10", source="event", segment="mid", rep_id="ivan"),
        ev("deal.created", "s10-c", day(18), deal_id="D10"),
        ev("deal.updated", "s10-u1", day(19), deal_id="D10", rep_id="ivan"),
        ev("deal.updated", "s10-u2", day(24), deal_id="D10", amount=1000, lead_id="L10"),
    ],
    # A duplicate lead (quinn's, ads) merged into L11a after its deal was won: deleted, and the
    # deal re-linked. The conversion, the deal and the customer are web's, via L11a.
    "merge as deletion and re-link": [
        ev("lead.created", "s11-la", day(6), lead_id="L11a", source="web", segment="smb", rep_id="judy"),
        ev("lead.created", "s11-lb", day(7), lead_id="L11b", source="ads", segment="smb", rep_id="quinn"),
        ev("deal.created", "s11-c", day(13), deal_id="D11", rep_id="judy", amount=1100, lead_id="L11b"),
        ev("deal.won", "s11-w", day(29), deal_id="D11", customer_id="C11", rep_id="judy", amount=1100),
        ev("lead.deleted", "s11-del", day(30), lead_id="L11b"),
        ev("deal.updated", "s11-rl", day(30), deal_id="D11", lead_id="L11a"),
    ],
    # 2000 stated in EUR, then the currency corrected to USD: 2000 USD = 1000 EUR.
    "currency-only edit": [
        ev("deal.created", "s12-c", day(25), deal_id="D12", rep_id="kim", amount=2000, stage="proposal"),
        ev("deal.updated", "s12-u", day(26), deal_id="D12", currency="USD"),
    ],
    # The same deal.created again under another event_id: a conflict, whichever comes first (the
    # payloads are equal, so the state is the same either way).
    "second deal.created still a conflict": [
        ev("deal.created", "s13-c", day(2), deal_id="D13", rep_id="liam", amount=50, stage="negotiation"),
        ev("deal.created", "s13-c2", day(2), deal_id="D13", rep_id="liam", amount=50, stage="negotiation"),
    ],
    # An update that states nothing (blank is absent) is refused: missing_field.
    "update stating nothing rejected": [
        ev("deal.updated", "s14-u", day(30), deal_id="D4", rep_id="  "),
    ],
}

EVENTS: list[dict[str, Any]] = [e for events in SCENARIOS.values() for e in events]
# The lines a replay rejects, and why; retries of these are left out of the shuffles (a conflict's
# retry is a conflict again).
REJECTED = {"s13-c2": "conflict", "s14-u": "missing_field"}
CONFLICTING = {"s13-c", "s13-c2"}

# ---------------------------------------------------------------------------- hand-counted KPIs

COUNTED = (
    "leads",
    "qualified_leads",
    "lead_conversions",
    "cohort_conversions",
    "deals_created",
    "deals_won",
    "deals_lost",
    "revenue_won",
    "new_customers",
)
STAGES = ("prospecting", "qualification", "proposal", "negotiation", "won")
MONEY = {"revenue_won"}


def kpis(**nonzero: float) -> dict[str, float]:
    """Every counted KPI (and stage entry, as ``entered_<stage>``): the given values, else 0."""
    out: dict[str, float] = {k: 0.0 if k in MONEY else 0 for k in COUNTED}
    out.update({f"entered_{s}": 0 for s in STAGES})
    unknown = set(nonzero) - set(out)
    assert not unknown, unknown
    out.update(nonzero)
    return out


def flatten(kpi_map: dict[str, Any], with_stages: bool) -> dict[str, Any]:
    """The counted KPIs of one total/dimension entry of a document, in the shape of ``kpis``."""
    out = {k: kpi_map[k] for k in COUNTED}
    if with_stages:
        out.update({f"entered_{s}": kpi_map["stage_entries"][s] for s in STAGES})
    return out


def no_stages(expected: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in expected.items() if not k.startswith("entered_")}


# Per scenario, which rep / source gets what; summed by hand below.
# all: every contribution.
ALL_BY_REP = {
    "alice": kpis(entered_negotiation=1),
    "bob": kpis(deals_created=1, deals_won=1, revenue_won=1500.0, new_customers=1, entered_prospecting=1,
                entered_won=1),
    "carol": kpis(deals_created=2, deals_won=1, deals_lost=1, revenue_won=700.0, new_customers=1,
                  entered_proposal=1, entered_prospecting=1, entered_won=1),
    "dave": kpis(deals_created=1, entered_qualification=1),
    "erin": kpis(deals_created=1, deals_won=1, revenue_won=450.0, new_customers=1, entered_prospecting=1,
                 entered_negotiation=1, entered_won=1),
    "frank": kpis(deals_created=1, entered_proposal=1),
    "gina": kpis(leads=1, qualified_leads=1, lead_conversions=1, cohort_conversions=1, deals_created=1,
                 deals_won=1, revenue_won=800.0, new_customers=1, entered_prospecting=1, entered_won=1),
    "hank": kpis(deals_created=1, deals_won=1, revenue_won=900.0, new_customers=1, entered_prospecting=1,
                 entered_won=1),
    "ivan": kpis(leads=1, deals_created=1, entered_prospecting=1),
    "judy": kpis(leads=1, lead_conversions=1, cohort_conversions=1, deals_created=1, deals_won=1,
                 revenue_won=1100.0, new_customers=1, entered_prospecting=1, entered_won=1),
    "kim": kpis(deals_created=1, entered_proposal=1),
    "liam": kpis(deals_created=1, entered_negotiation=1),
}  # fmt: skip
ALL_BY_SOURCE = {
    "unknown": kpis(deals_created=9, deals_won=4, deals_lost=1, revenue_won=3550.0, new_customers=4),
    "web": kpis(leads=2, qualified_leads=1, lead_conversions=2, cohort_conversions=2, deals_created=2,
                deals_won=2, revenue_won=1900.0, new_customers=2),
    "event": kpis(leads=1, deals_created=1),
}  # fmt: skip
ALL_TOTAL = kpis(
    leads=3, qualified_leads=1, lead_conversions=2, cohort_conversions=2, deals_created=12, deals_won=6,
    deals_lost=1, revenue_won=5450.0, new_customers=6, entered_prospecting=7, entered_qualification=1,
    entered_proposal=3, entered_negotiation=3, entered_won=6,
)  # fmt: skip

# 30d (03-02..03-31): all but D1's creation on 02-20 (bob's deal and prospecting entry).
D30_BY_REP = {**ALL_BY_REP, "bob": kpis(deals_won=1, revenue_won=1500.0, new_customers=1, entered_won=1)}
D30_BY_SOURCE = {
    **ALL_BY_SOURCE,
    "unknown": kpis(deals_created=8, deals_won=4, deals_lost=1, revenue_won=3550.0, new_customers=4),
}
D30_TOTAL = {**ALL_TOTAL, "deals_created": 11, "entered_prospecting": 6}

# 7d (03-25..03-31): the outcomes (03-25..03-29), D12's creation (03-25), no lead creation.
D7_BY_REP = {
    "bob": kpis(deals_won=1, revenue_won=1500.0, new_customers=1, entered_won=1),
    "carol": kpis(deals_won=1, deals_lost=1, revenue_won=700.0, new_customers=1, entered_won=1),
    "erin": kpis(deals_won=1, revenue_won=450.0, new_customers=1, entered_won=1),
    "gina": kpis(lead_conversions=1, deals_won=1, revenue_won=800.0, new_customers=1, entered_won=1),
    "hank": kpis(deals_won=1, revenue_won=900.0, new_customers=1, entered_won=1),
    "judy": kpis(lead_conversions=1, deals_won=1, revenue_won=1100.0, new_customers=1, entered_won=1),
    "kim": kpis(deals_created=1, entered_proposal=1),
}
D7_BY_SOURCE = {
    "unknown": kpis(deals_created=1, deals_won=4, deals_lost=1, revenue_won=3550.0, new_customers=4),
    "web": kpis(lead_conversions=2, deals_won=2, revenue_won=1900.0, new_customers=2),
}
D7_TOTAL = kpis(lead_conversions=2, deals_created=1, deals_won=6, deals_lost=1, revenue_won=5450.0,
                new_customers=6, entered_proposal=1, entered_won=6)  # fmt: skip

EXPECTED: dict[str, dict[str, Any]] = {
    "all": {"total": ALL_TOTAL, "by_rep": ALL_BY_REP, "by_source": ALL_BY_SOURCE},
    "30d": {"total": D30_TOTAL, "by_rep": D30_BY_REP, "by_source": D30_BY_SOURCE},
    "7d": {"total": D7_TOTAL, "by_rep": D7_BY_REP, "by_source": D7_BY_SOURCE},
}
# Won deals with a known creation: D1 36 days, D4 13, D7 18, D8 16, D9 21, D11 16; all won in 7d.
SALES_CYCLE_DAYS = 120 / 6

# Open: D3 negotiation 300, D5 negotiation 500, D10 prospecting 1000, D12 proposal 2000 USD,
# D13 negotiation 50.
PIPELINE = {
    "open_deals": 5,
    "value": 2850.0,
    "weighted_value": 1000 * 0.1 + 1000 * 0.5 + 850 * 0.8,
    "by_stage": {
        "prospecting": {"open_deals": 1, "value": 1000.0},
        "qualification": {"open_deals": 0, "value": 0.0},
        "proposal": {"open_deals": 1, "value": 1000.0},
        "negotiation": {"open_deals": 3, "value": 850.0},
    },
}
# Won now and not deleted: C1, C4, C7, C8, C9, C11; C4 churned.
ACTIVE = 5


def mismatches(document: dict[str, Any]) -> list[str]:
    """Where a section-5 document differs from the hand-counted KPIs (money within 1e-6)."""
    out: list[str] = []

    def compare(where: str, got: dict[str, Any], expected: dict[str, Any]) -> None:
        for key, want in expected.items():
            have = got[key]
            same = abs(have - want) <= 1e-6 if key in MONEY else have == want and type(have) is int
            if not same:
                out.append(f"{where}.{key}: got {have!r}, expected {want!r}")

    for window, parts in EXPECTED.items():
        doc = document["windows"][window]
        compare(f"{window}.total", flatten(doc["total"], True), parts["total"])
        cycle = doc["total"]["sales_cycle_days"]
        if cycle is None or abs(cycle - SALES_CYCLE_DAYS) > 1e-9:
            out.append(f"{window}.total.sales_cycle_days: got {cycle!r}, expected {SALES_CYCLE_DAYS}")
        for dim, with_stages in (("by_rep", True), ("by_source", False)):
            if sorted(doc[dim]) != sorted(parts[dim]):
                out.append(f"{window}.{dim}: keys {sorted(doc[dim])}, expected {sorted(parts[dim])}")
                continue
            for value, expected in parts[dim].items():
                want = expected if with_stages else no_stages(expected)
                compare(f"{window}.{dim}.{value}", flatten(doc[dim][value], with_stages), want)
    current = document["current"]
    if current["active_customers"] != ACTIVE:
        out.append(f"active_customers: got {current['active_customers']}, expected {ACTIVE}")
    pipeline = current["pipeline"]
    for key in ("open_deals", "value", "weighted_value"):
        if abs(pipeline[key] - PIPELINE[key]) > 1e-6:
            out.append(f"pipeline.{key}: got {pipeline[key]!r}, expected {PIPELINE[key]!r}")
    if pipeline["by_stage"] != PIPELINE["by_stage"]:
        out.append(f"pipeline.by_stage: got {pipeline['by_stage']!r}, expected {PIPELINE['by_stage']!r}")
    return out
