"""Realistic CRM event histories (DESIGN section 2 format) for demos, tests and benchmarks.

One engine, a seeded discrete-event simulation. Arrivals (leads, surveys, spend) are drawn per
generation chunk (a day, or a fraction of one at high rates); each entity then walks its life
cycle lazily, its one pending step kept in a heap:

    lead.created -> lead.qualified -> deal.created -> deal.stage_changed* -> deal.won | deal.lost
    deal.won -> customer: revenue.recorded monthly ... customer.churned

and, unless ``SimConfig.corrections`` is off, the CRM's later edits (contract v2,
docs/corrections.md): a lead's source fixed, a duplicate lead merged away (its deals re-linked),
an owner reassigned, a deal deleted (sometimes restored), an amount corrected after signature, a
won deal reopened and then won again (maybe by another rep, for more) or lost. They draw from a
random stream of their own, so the rest of a history is the same with or without them.

A chunk is generated only when the emission cursor reaches it, so the output depends only on the
seed and the first ``start`` (the origin), never on how ``[start, end)`` is cut into calls:
``simulate_history`` is ``LiveSimulator`` stepped chunk by chunk. Identifiers carry the seed and
the origin, so runs with other origins never collide (no false duplicates or conflicts).
"""

from __future__ import annotations

import math
import random
from bisect import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kpi_app.simulation.drops import RateDrop

DAY, HOUR, MONTH_DAYS = 86_400_000, 3_600_000, 30.44  # ms, ms, days
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MS = timedelta(milliseconds=1)
MAX_LEADS_PER_CHUNK = 2_000  # bounds the work and memory of one generation step

# The model's calibration (amounts in the reporting currency). EVENTS_PER_LEAD: all events per
# lead.created, measured on days 60-90 of a history; scaled_for_rate relies on it.
EVENTS_PER_LEAD = 7.5
SURVEYS_PER_LEAD = 4.5  # support and product surveys by people not linked to a customer
CUSTOMER_SURVEYS_PER_MONTH = 1.0
# Sales spend per lead, on working days: account executives (no source) and SDRs (outbound).
SALES_SPEND: tuple[tuple[str | None, float], ...] = ((None, 300.0), ("outbound", 50.0))
UNASSIGNED_LEADS, DEAL_FROM_QUALIFIED, BASE_WIN_RATE = 0.06, 0.8, 0.26
SLIP_BACK = 0.04  # a deal falls back one stage, once at most
# Corrections, per lead, deal or won deal.
FIX_SOURCE, DUPLICATE_LEAD, DUPLICATE_PICKED = 0.03, 0.01, 0.5
REASSIGN, DELETE, RESTORE = 0.04, 0.005, 0.3
AMEND, REOPEN, REWIN = 0.03, 0.03, 0.7
DROP_QUALIFY, DROP_STEP = 0.35, 0.45  # conversion_drop: factors on qualification, on deal steps
LOSS_REASONS = ("price", "competitor", "no_budget", "no_decision", "timing", "product_fit", "unresponsive")
LOSS_CUM = tuple(accumulate((25, 22, 15, 18, 10, 6, 4)))
NPS_CUM = tuple(accumulate((2, 1, 1, 2, 2, 5, 7, 12, 18, 27, 23)))  # 0..10: NPS +30
CSAT_CUM = tuple(accumulate((4, 5, 9, 32, 50)))  # 1..5: CSAT 0.82
REP_NAMES = (
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "ken", "laura",
    "mallory", "nina", "oscar", "peggy", "quinn", "rupert", "sybil", "trent", "uma", "victor", "walter",
    "xena", "yves", "zoe",
)  # fmt: skip


# Share of a day's arrivals per hour (UTC: business hours), and per weekday (Monday first).
HOURLY = tuple(w / 115 for w in (1, 1, 1, 1, 1, 2, 3, 5, 8, 10, 10, 9, 8, 9, 10, 9, 8, 6, 4, 3, 2, 2, 1, 1))
HOUR_CUM = tuple(accumulate(HOURLY))
WEEKDAY = tuple(w * 7 / 6 for w in (1.1, 1.15, 1.15, 1.1, 0.95, 0.3, 0.25))


@dataclass(frozen=True, slots=True)
class _Source:
    name: str
    share: float  # of the leads
    qualify: float  # P(lead.qualified)
    win: float  # factor on the deal win rate
    cost_per_lead: float  # marketing spend, per lead on average
    segments: tuple[float, float, float]  # P(smb), P(mid_market), P(enterprise)
    weekend_spend: float = 0.6


@dataclass(frozen=True, slots=True)
class _Segment:
    name: str
    deal_median: float  # annual contract value, billed monthly
    cycle_days: float  # mean deal.created -> outcome
    win: float  # factor on the deal win rate
    churn_per_month: float
    margin: float


SOURCES = (
    _Source("web", 0.30, 0.48, 1.00, 500.0, (0.70, 0.25, 0.05)),
    _Source("paid_search", 0.25, 0.42, 0.90, 830.0, (0.70, 0.25, 0.05)),
    _Source("referral", 0.08, 0.75, 1.50, 350.0, (0.45, 0.40, 0.15)),
    _Source("events", 0.10, 0.55, 1.00, 1650.0, (0.30, 0.45, 0.25), weekend_spend=0.0),
    _Source("outbound", 0.17, 0.36, 0.80, 200.0, (0.35, 0.40, 0.25)),
    _Source("partner", 0.10, 0.65, 1.25, 630.0, (0.40, 0.40, 0.20)),
)
SOURCE_CUM = tuple(accumulate(s.share for s in SOURCES))
SEGMENTS = (
    _Segment("smb", 9_000.0, 18.0, 1.05, 0.040, 0.78),
    _Segment("mid_market", 32_000.0, 40.0, 0.95, 0.025, 0.74),
    _Segment("enterprise", 120_000.0, 80.0, 0.80, 0.015, 0.68),
)


@dataclass(frozen=True)
class SimConfig:
    """What to simulate. ``drop_at`` and ``time_scale`` extend the contract:

    - ``conversion_drop``: from ``drop_at`` on (None: from the start) qualification falls to 35%
      and every deal step (advance, win) to 45% of its normal probability, so conversion and
      win rate fall at once, for alert demos.
    - ``drops``: targeted drops of one rate in one source, segment or the total, each from its
      own time (``kpi_app.simulation.drops``); they draw no random numbers, so a history without
      any is the same as before they existed.
    - ``time_scale``: life-cycle durations (qualification, deal stages, billing, churn) are
      divided by it. 1.0 gives real cycles of days to weeks, with more events in business hours
      and on weekdays. A live demo that should show deals closing within minutes uses e.g. 1440
      (a CRM day per minute); any value but 1.0 also flattens the seasonality, so the event rate
      is steady.
    """

    seed: int = 1
    reps: int = 8
    stages: tuple[str, ...] = ("prospecting", "qualification", "proposal", "negotiation")
    leads_per_day: float = 120.0
    conversion_drop: bool = False
    drop_at: datetime | None = None
    drops: tuple[RateDrop, ...] = ()
    time_scale: float = 1.0
    corrections: bool = True

    def __post_init__(self) -> None:
        if self.reps < 1:
            raise ValueError("reps must be >= 1")
        if not self.stages or len(set(self.stages)) != len(self.stages) or "won" in self.stages:
            raise ValueError("stages must be distinct names, at least one, not 'won'")
        if not (self.leads_per_day >= 0 and math.isfinite(self.leads_per_day)):
            raise ValueError("leads_per_day must be a finite number >= 0")
        if not (self.time_scale > 0 and math.isfinite(self.time_scale)):
            raise ValueError("time_scale must be a finite number > 0")
        if self.drop_at is not None and self.drop_at.tzinfo is None:
            raise ValueError("drop_at must be timezone-aware")


class Rep:
    __slots__ = ("capacity", "name", "size", "skill", "speed")

    def __init__(self, name: str, rng: random.Random) -> None:
        self.name = name
        self.skill = rng.triangular(0.7, 1.35, 1.0)  # factor on qualification and win rates
        self.size, self.speed = rng.uniform(0.85, 1.2), rng.uniform(0.8, 1.25)  # deal size, stage time
        self.capacity = rng.uniform(0.7, 1.3)  # share of the new leads


class Lead:
    __slots__ = ("duplicate", "duplicate_deals", "id", "rep", "segment", "source")

    def __init__(self, lead_id: str, source: _Source, segment: _Segment, rep: Rep | None) -> None:
        self.id, self.source, self.segment, self.rep = lead_id, source, segment, rep
        self.duplicate: str | None = None  # a second record of this lead, until merged away
        self.duplicate_deals: list[str] = []  # deals created on the duplicate by mistake


class Deal:
    __slots__ = ("amount", "customer", "id", "lead", "next", "owner", "rep", "slipped", "stage", "step_p")

    def __init__(self, deal_id: str, lead: Lead, rep: Rep, amount: float, step_p: list[float]) -> None:
        self.id, self.lead, self.rep, self.amount, self.step_p = deal_id, lead, rep, amount, step_p
        self.stage = self.next = 0  # next: the stage of the pending deal.stage_changed
        self.slipped = False
        self.customer: str | None = None  # set by the win
        self.owner = rep.name  # the rep its events name: a correction may reassign it (rep keeps the pace)


class Customer:
    __slots__ = ("churn_at", "id", "margin", "mrr")

    def __init__(self, customer_id: str, mrr: float, margin: float, churn_at: int) -> None:
        self.id, self.mrr, self.margin, self.churn_at = customer_id, mrr, margin, churn_at


# Pending-step kinds in the heap.
(
    LEAD, QUALIFY, DEAL, STAGE, WON, LOST, REVENUE, CHURN,
    FIX_LEAD, DUP_LEAD, MERGE, REASSIGN_DEAL, DELETE_DEAL, RESTORE_DEAL, AMEND_DEAL, REOPEN_DEAL,
    REWIN_DEAL, RELOST_DEAL, EMIT,
) = range(19)  # fmt: skip
Body = tuple[str, dict[str, object]]


def ms_ceil(dt: datetime) -> int:
    """Whole milliseconds since the epoch, rounded up: ``t >= dt`` iff ``t >= ms_ceil(dt)``."""
    if dt.tzinfo is None:
        raise ValueError("naive datetime: pass a timezone-aware one (e.g. tzinfo=UTC)")
    return -((EPOCH - dt) // MS)


def pick(rng: random.Random, cum: Sequence[float]) -> int:
    """An index drawn with the weights whose running sums are ``cum``."""
    return min(len(cum) - 1, bisect(cum, rng.random() * cum[-1]))


def poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    if mean > 40:  # normal approximation; exact enough for volumes
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k
