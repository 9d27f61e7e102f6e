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

import heapq
import math
import random
from bisect import bisect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from typing import Any, cast

_DAY, _HOUR, _MONTH_DAYS = 86_400_000, 3_600_000, 30.44  # ms, ms, days
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_MAX_LEADS_PER_CHUNK = 2_000  # bounds the work and memory of one generation step

# The model's calibration (amounts in the reporting currency). _EVENTS_PER_LEAD: all events per
# lead.created, measured on days 60-90 of a history; scaled_for_rate relies on it.
_EVENTS_PER_LEAD = 7.5
_SURVEYS_PER_LEAD = 4.5  # support and product surveys by people not linked to a customer
_CUSTOMER_SURVEYS_PER_MONTH = 1.0
# Sales spend per lead, on working days: account executives (no source) and SDRs (outbound).
_SALES_SPEND: tuple[tuple[str | None, float], ...] = ((None, 300.0), ("outbound", 50.0))
_UNASSIGNED_LEADS, _DEAL_FROM_QUALIFIED, _BASE_WIN_RATE = 0.06, 0.8, 0.26
_SLIP_BACK = 0.04  # a deal falls back one stage, once at most
# Corrections, per lead, deal or won deal.
_FIX_SOURCE, _DUPLICATE_LEAD, _DUPLICATE_PICKED = 0.03, 0.01, 0.5
_REASSIGN, _DELETE, _RESTORE = 0.04, 0.005, 0.3
_AMEND, _REOPEN, _REWIN = 0.03, 0.03, 0.7
_DROP_QUALIFY, _DROP_STEP = 0.35, 0.45  # conversion_drop: factors on qualification, on deal steps
_LOSS_REASONS = ("price", "competitor", "no_budget", "no_decision", "timing", "product_fit", "unresponsive")
_LOSS_CUM = tuple(accumulate((25, 22, 15, 18, 10, 6, 4)))
_NPS_CUM = tuple(accumulate((2, 1, 1, 2, 2, 5, 7, 12, 18, 27, 23)))  # 0..10: NPS +30
_CSAT_CUM = tuple(accumulate((4, 5, 9, 32, 50)))  # 1..5: CSAT 0.82
_REP_NAMES = (
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "ken", "laura",
    "mallory", "nina", "oscar", "peggy", "quinn", "rupert", "sybil", "trent", "uma", "victor", "walter",
    "xena", "yves", "zoe",
)  # fmt: skip


# Share of a day's arrivals per hour (UTC: business hours), and per weekday (Monday first).
_HOURLY = tuple(w / 115 for w in (1, 1, 1, 1, 1, 2, 3, 5, 8, 10, 10, 9, 8, 9, 10, 9, 8, 6, 4, 3, 2, 2, 1, 1))
_HOUR_CUM = tuple(accumulate(_HOURLY))
_WEEKDAY = tuple(w * 7 / 6 for w in (1.1, 1.15, 1.15, 1.1, 0.95, 0.3, 0.25))


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


_SOURCES = (
    _Source("web", 0.30, 0.48, 1.00, 500.0, (0.70, 0.25, 0.05)),
    _Source("paid_search", 0.25, 0.42, 0.90, 830.0, (0.70, 0.25, 0.05)),
    _Source("referral", 0.08, 0.75, 1.50, 350.0, (0.45, 0.40, 0.15)),
    _Source("events", 0.10, 0.55, 1.00, 1650.0, (0.30, 0.45, 0.25), weekend_spend=0.0),
    _Source("outbound", 0.17, 0.36, 0.80, 200.0, (0.35, 0.40, 0.25)),
    _Source("partner", 0.10, 0.65, 1.25, 630.0, (0.40, 0.40, 0.20)),
)
_SOURCE_CUM = tuple(accumulate(s.share for s in _SOURCES))
_SEGMENTS = (
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


class _Rep:
    __slots__ = ("capacity", "name", "size", "skill", "speed")

    def __init__(self, name: str, rng: random.Random) -> None:
        self.name = name
        self.skill = rng.triangular(0.7, 1.35, 1.0)  # factor on qualification and win rates
        self.size, self.speed = rng.uniform(0.85, 1.2), rng.uniform(0.8, 1.25)  # deal size, stage time
        self.capacity = rng.uniform(0.7, 1.3)  # share of the new leads


class _Lead:
    __slots__ = ("duplicate", "duplicate_deals", "id", "rep", "segment", "source")

    def __init__(self, lead_id: str, source: _Source, segment: _Segment, rep: _Rep | None) -> None:
        self.id, self.source, self.segment, self.rep = lead_id, source, segment, rep
        self.duplicate: str | None = None  # a second record of this lead, until merged away
        self.duplicate_deals: list[str] = []  # deals created on the duplicate by mistake


class _Deal:
    __slots__ = ("amount", "customer", "id", "lead", "next", "owner", "rep", "slipped", "stage", "step_p")

    def __init__(self, deal_id: str, lead: _Lead, rep: _Rep, amount: float, step_p: list[float]) -> None:
        self.id, self.lead, self.rep, self.amount, self.step_p = deal_id, lead, rep, amount, step_p
        self.stage = self.next = 0  # next: the stage of the pending deal.stage_changed
        self.slipped = False
        self.customer: str | None = None  # set by the win
        self.owner = rep.name  # the rep its events name: a correction may reassign it (rep keeps the pace)


class _Customer:
    __slots__ = ("churn_at", "id", "margin", "mrr")

    def __init__(self, customer_id: str, mrr: float, margin: float, churn_at: int) -> None:
        self.id, self.mrr, self.margin, self.churn_at = customer_id, mrr, margin, churn_at


# Pending-step kinds in the heap.
(
    _LEAD, _QUALIFY, _DEAL, _STAGE, _WON, _LOST, _REVENUE, _CHURN,
    _FIX_LEAD, _DUP_LEAD, _MERGE, _REASSIGN_DEAL, _DELETE_DEAL, _RESTORE_DEAL, _AMEND_DEAL, _REOPEN_DEAL,
    _REWIN_DEAL, _RELOST_DEAL, _EMIT,
) = range(19)  # fmt: skip
_Body = tuple[str, dict[str, object]]


def _ms_ceil(dt: datetime) -> int:
    """Whole milliseconds since the epoch, rounded up: ``t >= dt`` iff ``t >= _ms_ceil(dt)``."""
    if dt.tzinfo is None:
        raise ValueError("naive datetime: pass a timezone-aware one (e.g. tzinfo=UTC)")
    return -((_EPOCH - dt) // _MS)


def _pick(rng: random.Random, cum: Sequence[float]) -> int:
    """An index drawn with the weights whose running sums are ``cum``."""
    return min(len(cum) - 1, bisect(cum, rng.random() * cum[-1]))


def _poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    if mean > 40:  # normal approximation; exact enough for volumes
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


class LiveSimulator:
    """The simulation engine, advanced by consecutive ``[start, end)`` intervals.

    The first call's ``start`` is the origin: nothing exists before it, so a live run that
    should start with a filled pipeline backfills with its first call (``now - 30 min .. now`` at
    ``time_scale=1440`` covers 30 CRM days) and then goes on from ``now``. A call whose ``start``
    leaves a gap after the previous ``end`` runs the gap without emitting it; an overlapping one
    emits only from the previous ``end`` on. Open leads, deals and customers carry over.
    """

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)
        names = [_REP_NAMES[i % 26] + (str(i // 26 + 1) if i >= 26 else "") for i in range(config.reps)]
        self._reps = [_Rep(name, self._rng) for name in names]
        self._rep_cum = list(accumulate(r.capacity for r in self._reps))
        self._stages = config.stages
        self._lpd = config.leads_per_day
        self._scale = config.time_scale
        self._seasonal = config.time_scale == 1.0  # a compressed day has no business hours
        self._drop_ms = 2**62  # deal and lead decisions taking effect from here on are hit by the drop
        if config.conversion_drop:
            self._drop_ms = _ms_ceil(config.drop_at) if config.drop_at else -(2**62)
        per_day = min(86_400, max(1, math.ceil(config.leads_per_day / _MAX_LEADS_PER_CHUNK)))
        per_day = next(n for n in range(per_day, 86_401) if 86_400 % n == 0)  # whole seconds
        self.chunk = timedelta(seconds=86_400 // per_day)  # the generation step, aligned to midnight UTC
        self._chunk_ms = self.chunk // _MS
        self._heap: list[tuple[int, int, int, object]] = []
        self._seq = self._events = self._leads = self._deals = self._customers = 0
        self._active: dict[str, _Customer] = {}
        self._cursor = self._gen_until = 0
        self._prefix = ""  # set by the first call, from the origin
        self._iso_day, self._iso_date = -(2**62), ""
        self._fix = random.Random(f"corrections-{config.seed}")
        self._fixing = config.corrections
        self._handlers: tuple[Callable[[int, Any], _Body], ...] = (
            self._lead, self._qualify, self._deal, self._stage, self._won, self._lost,
            self._revenue, self._churn,
            self._fix_lead, self._dup_lead, self._merge, self._reassign, self._delete, self._restore,
            self._amend, self._reopen, self._rewin, self._relost,
        )  # fmt: skip

    @property
    def active_customers(self) -> int:
        return len(self._active)

    def events_between(self, start: datetime, end: datetime) -> list[dict[str, object]]:
        """Events with ``start <= occurred_at < end``, in ``occurred_at`` order."""
        s, e = _ms_ceil(start), _ms_ceil(end)
        if not self._prefix:
            self._cursor = self._gen_until = s
            self._prefix = f"sim-{self.config.seed}-{s:x}"
        out: list[dict[str, object]] = []
        while self._cursor < e:
            if self._cursor >= self._gen_until:
                chunk_end = (self._gen_until // self._chunk_ms + 1) * self._chunk_ms
                self._generate(self._gen_until, chunk_end)
                self._gen_until = chunk_end
            stop = min(e, self._gen_until)
            self._run(stop, s, out)
            self._cursor = stop
        return out

    # -- engine -------------------------------------------------------------------------------

    def _push(self, t: int, kind: int, obj: object) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, obj))

    def _run(self, stop: int, emit_from: int, out: list[dict[str, object]]) -> None:
        heap, handlers, prefix = self._heap, self._handlers, self._prefix
        while heap and heap[0][0] < stop:
            t, _, kind, obj = heapq.heappop(heap)
            if kind == _EMIT:
                typ, fields = cast(_Body, obj)
            else:
                typ, fields = handlers[kind](t, obj)
            n = self._events
            self._events = n + 1
            if t >= emit_from:
                when = self._iso(t)
                event: dict[str, object] = {"event_id": f"{prefix}-{n}", "type": typ, "occurred_at": when}
                event.update(fields)
                out.append(event)

    def _iso(self, t: int) -> str:
        day, r = divmod(t, _DAY)
        if day != self._iso_day:
            self._iso_day, self._iso_date = day, (_EPOCH + timedelta(days=day)).strftime("%Y-%m-%dT")
        s, ms = divmod(r, 1000)
        m, s = divmod(s, 60)
        h, m = divmod(m, 60)
        return f"{self._iso_date}{h:02d}:{m:02d}:{s:02d}.{ms:03d}Z"

    def _later(self, t: int, days: float, rng: random.Random | None = None) -> int:
        """``t`` plus a scaled delay; delays of a day or more land in business hours, mostly on weekdays.

        ``rng``: the stream to draw from (corrections pass their own)."""
        rng = rng or self._rng
        delay = days * _DAY / self._scale
        if delay < _DAY or not self._seasonal:
            return t + max(1, int(delay))
        day = (t + int(delay)) // _DAY
        weekday = (day + 3) % 7  # 1970-01-01 was a Thursday
        if weekday >= 5 and rng.random() < 0.85:  # to Monday .. Wednesday
            day += 7 - weekday + rng.randrange(3)
        return day * _DAY + _pick(rng, _HOUR_CUM) * _HOUR + rng.randrange(_HOUR)

    def _fix_later(self, t: int, low: float, high: float) -> int:
        return self._later(t, self._fix.uniform(low, high), self._fix)

    def _generate(self, a: int, b: int) -> None:
        """Arrivals of the chunk ``[a, b)``: leads and surveys per hour slice, spend at its start."""
        rng, lpd, t = self._rng, self._lpd, a
        while t < b:
            nxt = min(b, (t // _HOUR + 1) * _HOUR)
            weekday = (t // _DAY + 3) % 7
            season = _WEEKDAY[weekday] * _HOURLY[t % _DAY // _HOUR] * 24 if self._seasonal else 1.0
            mean = lpd * season * (nxt - t) / _DAY
            for _ in range(_poisson(rng, mean)):
                self._push(rng.randrange(t, nxt), _LEAD, None)
            for _ in range(_poisson(rng, mean * _SURVEYS_PER_LEAD)):
                self._push(rng.randrange(t, nxt), _EMIT, self._survey(None))
            t = nxt
        frac = (b - a) / _DAY
        if self._active:
            mean = len(self._active) * _CUSTOMER_SURVEYS_PER_MONTH / _MONTH_DAYS * frac * self._scale
            customers = list(self._active)
            for _ in range(_poisson(rng, mean)):
                self._push(rng.randrange(a, b), _EMIT, self._survey(rng.choice(customers)))
        # Shares of working-day and weekend-day spend; without seasonality every day gets the mean.
        weekend = (a // _DAY + 3) % 7 >= 5
        work, rest = (5 / 7, 2 / 7) if not self._seasonal else (0.0, 1.0) if weekend else (1.0, 0.0)
        spend: list[tuple[str, str | None, float]] = [
            ("marketing", s.name, s.cost_per_lead * s.share * (work + rest * s.weekend_spend))
            for s in _SOURCES
        ]
        spend += [("sales", src, per_lead * work * 7 / 5) for src, per_lead in _SALES_SPEND]
        for category, source, per_lead in spend:
            amount = round(per_lead * lpd * frac * rng.uniform(0.8, 1.2), 2)
            if amount > 0:
                fields: dict[str, object] = {"amount": amount, "category": category}
                if source:
                    fields["source"] = source
                self._push(a + rng.randrange(max(1, (b - a) // 20)), _EMIT, ("spend.recorded", fields))

    def _survey(self, customer_id: str | None) -> _Body:
        rng = self._rng
        nps = rng.random() < (0.5 if customer_id else 0.25)
        score = _pick(rng, _NPS_CUM) if nps else 1 + _pick(rng, _CSAT_CUM)
        fields: dict[str, object] = {"kind": "nps" if nps else "csat", "score": score}
        if customer_id:
            fields["customer_id"] = customer_id
        return "survey.answered", fields

    # -- life cycles: each handler emits one event and schedules the entity's next step --------

    def _lead(self, t: int, _: object) -> _Body:
        rng = self._rng
        source = _SOURCES[_pick(rng, _SOURCE_CUM)]
        segment = rng.choices(_SEGMENTS, source.segments)[0]
        rep = None if rng.random() < _UNASSIGNED_LEADS else self._pick_rep()
        self._leads += 1
        lead = _Lead(f"{self._prefix}-L{self._leads}", source, segment, rep)
        fields: dict[str, object] = {"lead_id": lead.id, "source": source.name}
        if rng.random() > 0.02:
            fields["segment"] = segment.name
        if rep:
            fields["rep_id"] = rep.name
        when = self._later(t, 0.05 + rng.expovariate(1 / 1.5))
        p = source.qualify * (rep.skill**0.5 if rep else 0.9)
        if rng.random() < p * (_DROP_QUALIFY if when >= self._drop_ms else 1.0):
            self._push(when, _QUALIFY, lead)
        if self._fixing:
            fix = self._fix
            if fix.random() < _FIX_SOURCE:
                self._push(self._fix_later(t, 0.2, 3.0), _FIX_LEAD, lead)
            if fix.random() < _DUPLICATE_LEAD:
                self._push(t + _HOUR, _DUP_LEAD, lead)
        return "lead.created", fields

    def _qualify(self, t: int, lead: _Lead) -> _Body:
        when = self._later(t, 0.1 + self._rng.expovariate(1 / 2.0))
        p = _DEAL_FROM_QUALIFIED * (_DROP_STEP if when >= self._drop_ms else 1.0)
        if self._rng.random() < p:
            self._push(when, _DEAL, lead)
        return "lead.qualified", {"lead_id": lead.id}

    def _deal(self, t: int, lead: _Lead) -> _Body:
        rng = self._rng
        rep = lead.rep or self._pick_rep()
        seg = lead.segment
        amount = round(seg.deal_median * rep.size * rng.lognormvariate(0, 0.5), 2)
        win = min(0.85, _BASE_WIN_RATE * lead.source.win * seg.win * rep.skill)
        n = len(self._stages)
        total = n * (n + 3) / 2  # later steps are likelier to succeed: exponents n+1, n, ..., 2
        step_p = [win ** ((n + 1 - i) / total) for i in range(n)]
        self._deals += 1
        deal = _Deal(f"{self._prefix}-D{self._deals}", lead, rep, amount, step_p)
        self._schedule(deal, t)
        named = lead.id
        if self._fixing:
            fix = self._fix
            if lead.duplicate and fix.random() < _DUPLICATE_PICKED:  # the rep picked the duplicate
                named = lead.duplicate
                lead.duplicate_deals.append(deal.id)
            if fix.random() < _REASSIGN:
                self._push(self._fix_later(t, 1.0, 10.0), _REASSIGN_DEAL, deal)
            if fix.random() < _DELETE:
                self._push(self._fix_later(t, 0.5, 5.0), _DELETE_DEAL, deal)
        fields = {"deal_id": deal.id, "lead_id": named, "rep_id": rep.name, "amount": amount}
        return "deal.created", {**fields, "stage": self._stages[0]}

    def _schedule(self, deal: _Deal, t: int) -> None:
        rng, i, n = self._rng, deal.stage, len(self._stages)
        mean = deal.lead.segment.cycle_days / n * deal.rep.speed
        when = self._later(t, rng.gammavariate(2.0, mean / 2))
        if i > 0 and not deal.slipped and rng.random() < _SLIP_BACK:
            deal.slipped, deal.next = True, i - 1
            self._push(when, _STAGE, deal)
        elif rng.random() < deal.step_p[i] * (_DROP_STEP if when >= self._drop_ms else 1.0):
            deal.next = i + 1
            self._push(when, _WON if i + 1 == n else _STAGE, deal)
        else:
            self._push(when, _LOST, deal)

    def _stage(self, t: int, deal: _Deal) -> _Body:
        rng = self._rng
        fields: dict[str, object] = {
            "deal_id": deal.id, "from_stage": self._stages[deal.stage], "to_stage": self._stages[deal.next]
        }  # fmt: skip
        deal.stage = deal.next
        if rng.random() < 0.8:
            fields["rep_id"] = deal.owner
        if rng.random() < 0.3:
            deal.amount = round(deal.amount * rng.uniform(0.85, 1.15), 2)
            fields["amount"] = deal.amount
        self._schedule(deal, t)
        return "deal.stage_changed", fields

    def _won(self, t: int, deal: _Deal) -> _Body:
        rng, seg = self._rng, deal.lead.segment
        amount = round(deal.amount * rng.uniform(0.9, 1.0), 2)  # the final discount
        months = 0.5 + rng.expovariate(seg.churn_per_month)  # monthly terms, never in month one
        margin = min(0.85, max(0.6, seg.margin + rng.uniform(-0.06, 0.06)))
        self._customers += 1
        customer = _Customer(f"{self._prefix}-C{self._customers}", amount / 12, margin, 0)
        customer.churn_at = self._later(t, months * _MONTH_DAYS)
        self._active[customer.id] = customer
        self._push(customer.churn_at, _CHURN, customer)
        first = self._later(t, rng.uniform(1.0, 10.0))
        if first < customer.churn_at:
            self._push(first, _REVENUE, customer)
        fields: dict[str, object] = {
            "deal_id": deal.id, "customer_id": customer.id, "rep_id": deal.owner, "amount": amount
        }  # fmt: skip
        if rng.random() < 0.92:
            fields["lead_id"] = deal.lead.id
        deal.amount, deal.customer = amount, customer.id
        if self._fixing:
            fix = self._fix
            if fix.random() < _AMEND:
                self._push(self._fix_later(t, 1.0, 7.0), _AMEND_DEAL, deal)
            elif fix.random() < _REOPEN:
                self._push(self._fix_later(t, 1.0, 14.0), _REOPEN_DEAL, deal)
        return "deal.won", fields

    def _lost(self, t: int, deal: _Deal) -> _Body:
        fields: dict[str, object] = {"deal_id": deal.id, "rep_id": deal.owner}
        if self._rng.random() < 0.92:
            fields["lead_id"] = deal.lead.id
        if self._rng.random() < 0.95:
            fields["reason"] = _LOSS_REASONS[_pick(self._rng, _LOSS_CUM)]
        return "deal.lost", fields

    def _revenue(self, t: int, customer: _Customer) -> _Body:
        rng = self._rng
        nxt = self._later(t, _MONTH_DAYS + rng.uniform(-1.0, 1.0))
        if nxt < customer.churn_at:
            self._push(nxt, _REVENUE, customer)
        amount = round(customer.mrr * rng.uniform(0.95, 1.08), 2)  # usage on top of the subscription
        margin = round(min(0.85, max(0.6, customer.margin + rng.uniform(-0.02, 0.02))), 3)
        return "revenue.recorded", {"customer_id": customer.id, "amount": amount, "gross_margin": margin}

    def _churn(self, t: int, customer: _Customer) -> _Body:
        del self._active[customer.id]
        return "customer.churned", {"customer_id": customer.id}

    def _pick_rep(self) -> _Rep:
        return self._reps[_pick(self._rng, self._rep_cum)]

    # -- corrections: the CRM's later edits (drawn from self._fix) ------------------------------

    def _other_rep(self, name: str) -> str:
        others = [r.name for r in self._reps if r.name != name]
        return self._fix.choice(others) if others else name

    def _fix_lead(self, t: int, lead: _Lead) -> _Body:
        others = [src for src in _SOURCES if src is not lead.source]
        return "lead.updated", {"lead_id": lead.id, "source": self._fix.choice(others).name}

    def _dup_lead(self, t: int, lead: _Lead) -> _Body:
        lead.duplicate = f"{lead.id}-dup"
        self._push(self._fix_later(t, 1.0, 4.0), _MERGE, lead)
        fields: dict[str, object] = {"lead_id": lead.duplicate, "source": lead.source.name}
        return "lead.created", {**fields, "segment": lead.segment.name}

    def _merge(self, t: int, lead: _Lead) -> _Body:
        """The duplicate merged into the lead: its deals re-linked, then it is deleted."""
        assert lead.duplicate is not None
        for deal_id in lead.duplicate_deals:
            self._push(t, _EMIT, ("deal.updated", {"deal_id": deal_id, "lead_id": lead.id}))
        duplicate, lead.duplicate, lead.duplicate_deals = lead.duplicate, None, []
        return "lead.deleted", {"lead_id": duplicate}

    def _reassign(self, t: int, deal: _Deal) -> _Body:
        deal.owner = self._other_rep(deal.owner)  # later events of the deal name the new owner
        return "deal.updated", {"deal_id": deal.id, "rep_id": deal.owner}

    def _delete(self, t: int, deal: _Deal) -> _Body:
        if self._fix.random() < _RESTORE:
            self._push(self._fix_later(t, 0.2, 2.0), _RESTORE_DEAL, deal)
        return "deal.deleted", {"deal_id": deal.id}

    def _restore(self, t: int, deal: _Deal) -> _Body:
        return "deal.restored", {"deal_id": deal.id}

    def _amend(self, t: int, deal: _Deal) -> _Body:
        deal.amount = round(deal.amount * self._fix.uniform(0.85, 1.1), 2)
        return "deal.updated", {"deal_id": deal.id, "amount": deal.amount}

    def _reopen(self, t: int, deal: _Deal) -> _Body:
        fix = self._fix
        when = self._fix_later(t, 2.0, 20.0)
        self._push(when, _REWIN_DEAL if fix.random() < _REWIN else _RELOST_DEAL, deal)
        return "deal.reopened", {"deal_id": deal.id, "stage": self._stages[-1]}

    def _rewin(self, t: int, deal: _Deal) -> _Body:
        """Won again, for more, by its owner or (one time in three) a colleague who took over."""
        fix = self._fix
        if fix.random() < 1 / 3:
            deal.owner = self._other_rep(deal.owner)
        deal.amount = round(deal.amount * fix.uniform(1.0, 1.2), 2)
        fields: dict[str, object] = {
            "deal_id": deal.id,
            "customer_id": deal.customer,
            "rep_id": deal.owner,
        }
        return "deal.won", {**fields, "amount": deal.amount, "lead_id": deal.lead.id}

    def _relost(self, t: int, deal: _Deal) -> _Body:
        reason = _LOSS_REASONS[_pick(self._fix, _LOSS_CUM)]
        return "deal.lost", {
            "deal_id": deal.id,
            "rep_id": deal.owner,
            "lead_id": deal.lead.id,
            "reason": reason,
        }


def simulate_history(config: SimConfig, *, start: datetime, end: datetime) -> Iterator[dict[str, object]]:
    """Every event with ``start <= occurred_at < end``, in ``occurred_at`` order, deterministic for
    a seed and ``start``. Deals whose outcome would fall at or after ``end`` stay open."""
    sim = LiveSimulator(config)
    t = start
    while t < end:
        step_end = min(end, t + sim.chunk)
        yield from sim.events_between(t, step_end)
        t = step_end


def scaled_for_rate(config: SimConfig, events_per_second: float) -> SimConfig:
    """``config`` with ``leads_per_day`` set so the steady-state total event rate is about
    ``events_per_second`` (the funnel needs about one cycle length, divided by ``time_scale``,
    to fill up after the origin)."""
    if not (events_per_second >= 0 and math.isfinite(events_per_second)):
        raise ValueError("events_per_second must be a finite number >= 0")
    return replace(config, leads_per_day=events_per_second * 86_400 / _EVENTS_PER_LEAD)
