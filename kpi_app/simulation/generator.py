"""The simulation engine: ``LiveSimulator`` steps the model of ``kpi_app.simulation.model`` through
consecutive intervals; ``simulate_history`` is it run over one ``[start, end)``."""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from itertools import accumulate
from typing import Any, cast

from kpi_app.simulation.corrections import CorrectionSteps
from kpi_app.simulation.drops import DropSet
from kpi_app.simulation.model import (
    AMEND,
    AMEND_DEAL,
    BASE_WIN_RATE,
    CHURN,
    CSAT_CUM,
    CUSTOMER_SURVEYS_PER_MONTH,
    DAY,
    DEAL,
    DEAL_FROM_QUALIFIED,
    DELETE,
    DELETE_DEAL,
    DROP_QUALIFY,
    DROP_STEP,
    DUP_LEAD,
    DUPLICATE_LEAD,
    DUPLICATE_PICKED,
    EMIT,
    EPOCH,
    EVENTS_PER_LEAD,
    FIX_LEAD,
    FIX_SOURCE,
    HOUR,
    HOUR_CUM,
    HOURLY,
    LEAD,
    LOSS_CUM,
    LOSS_REASONS,
    LOST,
    MAX_LEADS_PER_CHUNK,
    MONTH_DAYS,
    MS,
    NPS_CUM,
    QUALIFY,
    REASSIGN,
    REASSIGN_DEAL,
    REOPEN,
    REOPEN_DEAL,
    REP_NAMES,
    REVENUE,
    SALES_SPEND,
    SEGMENTS,
    SLIP_BACK,
    SOURCE_CUM,
    SOURCES,
    STAGE,
    SURVEYS_PER_LEAD,
    UNASSIGNED_LEADS,
    WEEKDAY,
    WON,
    Body,
    Customer,
    Deal,
    Lead,
    Rep,
    SimConfig,
    ms_ceil,
    pick,
    poisson,
)


class LiveSimulator(CorrectionSteps):
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
        names = [REP_NAMES[i % 26] + (str(i // 26 + 1) if i >= 26 else "") for i in range(config.reps)]
        self._reps = [Rep(name, self._rng) for name in names]
        self._rep_cum = list(accumulate(r.capacity for r in self._reps))
        self._stages = config.stages
        self._lpd = config.leads_per_day
        self._scale = config.time_scale
        self._seasonal = config.time_scale == 1.0  # a compressed day has no business hours
        self._drop_ms = 2**62  # deal and lead decisions taking effect from here on are hit by the drop
        if config.conversion_drop:
            self._drop_ms = ms_ceil(config.drop_at) if config.drop_at else -(2**62)
        self._drops = DropSet(config.drops)
        per_day = min(86_400, max(1, math.ceil(config.leads_per_day / MAX_LEADS_PER_CHUNK)))
        per_day = next(n for n in range(per_day, 86_401) if 86_400 % n == 0)  # whole seconds
        self.chunk = timedelta(seconds=86_400 // per_day)  # the generation step, aligned to midnight UTC
        self._chunk_ms = self.chunk // MS
        self._heap: list[tuple[int, int, int, object]] = []
        self._seq = self._events = self._leads = self._deals = self._customers = 0
        self._active: dict[str, Customer] = {}
        self._cursor = self._gen_until = 0
        self._prefix = ""  # set by the first call, from the origin
        self._iso_day, self._iso_date = -(2**62), ""
        self._fix = random.Random(f"corrections-{config.seed}")
        self._fixing = config.corrections
        self._handlers: tuple[Callable[[int, Any], Body], ...] = (
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
        s, e = ms_ceil(start), ms_ceil(end)
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
            if kind == EMIT:
                typ, fields = cast(Body, obj)
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
        day, r = divmod(t, DAY)
        if day != self._iso_day:
            self._iso_day, self._iso_date = day, (EPOCH + timedelta(days=day)).strftime("%Y-%m-%dT")
        s, ms = divmod(r, 1000)
        m, s = divmod(s, 60)
        h, m = divmod(m, 60)
        return f"{self._iso_date}{h:02d}:{m:02d}:{s:02d}.{ms:03d}Z"

    def _later(self, t: int, days: float, rng: random.Random | None = None) -> int:
        """``t`` plus a scaled delay; delays of a day or more land in business hours, mostly on weekdays.

        ``rng``: the stream to draw from (corrections pass their own)."""
        rng = rng or self._rng
        delay = days * DAY / self._scale
        if delay < DAY or not self._seasonal:
            return t + max(1, int(delay))
        day = (t + int(delay)) // DAY
        weekday = (day + 3) % 7  # 1970-01-01 was a Thursday
        if weekday >= 5 and rng.random() < 0.85:  # to Monday .. Wednesday
            day += 7 - weekday + rng.randrange(3)
        return day * DAY + pick(rng, HOUR_CUM) * HOUR + rng.randrange(HOUR)

    def _fix_later(self, t: int, low: float, high: float) -> int:
        return self._later(t, self._fix.uniform(low, high), self._fix)

    def _generate(self, a: int, b: int) -> None:
        """Arrivals of the chunk ``[a, b)``: leads and surveys per hour slice, spend at its start."""
        rng, lpd, t = self._rng, self._lpd, a
        while t < b:
            nxt = min(b, (t // HOUR + 1) * HOUR)
            weekday = (t // DAY + 3) % 7
            season = WEEKDAY[weekday] * HOURLY[t % DAY // HOUR] * 24 if self._seasonal else 1.0
            mean = lpd * season * (nxt - t) / DAY
            for _ in range(poisson(rng, mean)):
                self._push(rng.randrange(t, nxt), LEAD, None)
            for _ in range(poisson(rng, mean * SURVEYS_PER_LEAD)):
                self._push(rng.randrange(t, nxt), EMIT, self._survey(None))
            t = nxt
        frac = (b - a) / DAY
        if self._active:
            mean = len(self._active) * CUSTOMER_SURVEYS_PER_MONTH / MONTH_DAYS * frac * self._scale
            customers = list(self._active)
            for _ in range(poisson(rng, mean)):
                self._push(rng.randrange(a, b), EMIT, self._survey(rng.choice(customers)))
        # Shares of working-day and weekend-day spend; without seasonality every day gets the mean.
        weekend = (a // DAY + 3) % 7 >= 5
        work, rest = (5 / 7, 2 / 7) if not self._seasonal else (0.0, 1.0) if weekend else (1.0, 0.0)
        spend: list[tuple[str, str | None, float]] = [
            ("marketing", s.name, s.cost_per_lead * s.share * (work + rest * s.weekend_spend))
            for s in SOURCES
        ]
        spend += [("sales", src, per_lead * work * 7 / 5) for src, per_lead in SALES_SPEND]
        for category, source, per_lead in spend:
            amount = round(per_lead * lpd * frac * rng.uniform(0.8, 1.2), 2)
            if amount > 0:
                fields: dict[str, object] = {"amount": amount, "category": category}
                if source:
                    fields["source"] = source
                self._push(a + rng.randrange(max(1, (b - a) // 20)), EMIT, ("spend.recorded", fields))

    def _survey(self, customer_id: str | None) -> Body:
        rng = self._rng
        nps = rng.random() < (0.5 if customer_id else 0.25)
        score = pick(rng, NPS_CUM) if nps else 1 + pick(rng, CSAT_CUM)
        fields: dict[str, object] = {"kind": "nps" if nps else "csat", "score": score}
        if customer_id:
            fields["customer_id"] = customer_id
        return "survey.answered", fields

    # -- life cycles: each handler emits one event and schedules the entity's next step --------

    def _lead(self, t: int, _: object) -> Body:
        rng = self._rng
        source = SOURCES[pick(rng, SOURCE_CUM)]
        segment = rng.choices(SEGMENTS, source.segments)[0]
        rep = None if rng.random() < UNASSIGNED_LEADS else self._pick_rep()
        self._leads += 1
        lead = Lead(f"{self._prefix}-L{self._leads}", source, segment, rep)
        fields: dict[str, object] = {"lead_id": lead.id, "source": source.name}
        if rng.random() > 0.02:
            fields["segment"] = segment.name
        if rep:
            fields["rep_id"] = rep.name
        when = self._later(t, 0.05 + rng.expovariate(1 / 1.5))
        p = source.qualify * (rep.skill**0.5 if rep else 0.9)
        if self._drops:
            p *= self._drops.factor("qualification", when, source.name, segment.name)
        if rng.random() < p * (DROP_QUALIFY if when >= self._drop_ms else 1.0):
            self._push(when, QUALIFY, lead)
        if self._fixing:
            fix = self._fix
            if fix.random() < FIX_SOURCE:
                self._push(self._fix_later(t, 0.2, 3.0), FIX_LEAD, lead)
            if fix.random() < DUPLICATE_LEAD:
                self._push(t + HOUR, DUP_LEAD, lead)
        return "lead.created", fields

    def _qualify(self, t: int, lead: Lead) -> Body:
        when = self._later(t, 0.1 + self._rng.expovariate(1 / 2.0))
        p = DEAL_FROM_QUALIFIED * (DROP_STEP if when >= self._drop_ms else 1.0)
        if self._drops:
            p *= self._drops.factor("conversion", when, lead.source.name, lead.segment.name)
        if self._rng.random() < p:
            self._push(when, DEAL, lead)
        return "lead.qualified", {"lead_id": lead.id}

    def _deal(self, t: int, lead: Lead) -> Body:
        rng = self._rng
        rep = lead.rep or self._pick_rep()
        seg = lead.segment
        amount = round(seg.deal_median * rep.size * rng.lognormvariate(0, 0.5), 2)
        win = min(0.85, BASE_WIN_RATE * lead.source.win * seg.win * rep.skill)
        n = len(self._stages)
        total = n * (n + 3) / 2  # later steps are likelier to succeed: exponents n+1, n, ..., 2
        step_p = [win ** ((n + 1 - i) / total) for i in range(n)]
        self._deals += 1
        deal = Deal(f"{self._prefix}-D{self._deals}", lead, rep, amount, step_p)
        self._schedule(deal, t)
        named = lead.id
        if self._fixing:
            fix = self._fix
            if lead.duplicate and fix.random() < DUPLICATE_PICKED:  # the rep picked the duplicate
                named = lead.duplicate
                lead.duplicate_deals.append(deal.id)
            if fix.random() < REASSIGN:
                self._push(self._fix_later(t, 1.0, 10.0), REASSIGN_DEAL, deal)
            if fix.random() < DELETE:
                self._push(self._fix_later(t, 0.5, 5.0), DELETE_DEAL, deal)
        fields = {"deal_id": deal.id, "lead_id": named, "rep_id": rep.name, "amount": amount}
        return "deal.created", {**fields, "stage": self._stages[0]}

    def _schedule(self, deal: Deal, t: int) -> None:
        rng, i, n = self._rng, deal.stage, len(self._stages)
        mean = deal.lead.segment.cycle_days / n * deal.rep.speed
        when = self._later(t, rng.gammavariate(2.0, mean / 2))
        if i > 0 and not deal.slipped and rng.random() < SLIP_BACK:
            deal.slipped, deal.next = True, i - 1
            self._push(when, STAGE, deal)
        elif rng.random() < self._step_p(deal, when):
            deal.next = i + 1
            self._push(when, WON if i + 1 == n else STAGE, deal)
        else:
            self._push(when, LOST, deal)

    def _step_p(self, deal: Deal, when: int) -> float:
        """P(the deal's next step succeeds), under the drops in effect at ``when``."""
        p = deal.step_p[deal.stage] * (DROP_STEP if when >= self._drop_ms else 1.0)
        if self._drops:
            rate = "win" if deal.stage + 1 == len(self._stages) else "stage"
            p *= self._drops.factor(rate, when, deal.lead.source.name, deal.lead.segment.name)
        return p

    def _stage(self, t: int, deal: Deal) -> Body:
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

    def _won(self, t: int, deal: Deal) -> Body:
        rng, seg = self._rng, deal.lead.segment
        amount = round(deal.amount * rng.uniform(0.9, 1.0), 2)  # the final discount
        months = 0.5 + rng.expovariate(seg.churn_per_month)  # monthly terms, never in month one
        margin = min(0.85, max(0.6, seg.margin + rng.uniform(-0.06, 0.06)))
        self._customers += 1
        customer = Customer(f"{self._prefix}-C{self._customers}", amount / 12, margin, 0)
        customer.churn_at = self._later(t, months * MONTH_DAYS)
        self._active[customer.id] = customer
        self._push(customer.churn_at, CHURN, customer)
        first = self._later(t, rng.uniform(1.0, 10.0))
        if first < customer.churn_at:
            self._push(first, REVENUE, customer)
        fields: dict[str, object] = {
            "deal_id": deal.id, "customer_id": customer.id, "rep_id": deal.owner, "amount": amount
        }  # fmt: skip
        if rng.random() < 0.92:
            fields["lead_id"] = deal.lead.id
        deal.amount, deal.customer = amount, customer.id
        if self._fixing:
            fix = self._fix
            if fix.random() < AMEND:
                self._push(self._fix_later(t, 1.0, 7.0), AMEND_DEAL, deal)
            elif fix.random() < REOPEN:
                self._push(self._fix_later(t, 1.0, 14.0), REOPEN_DEAL, deal)
        return "deal.won", fields

    def _lost(self, t: int, deal: Deal) -> Body:
        fields: dict[str, object] = {"deal_id": deal.id, "rep_id": deal.owner}
        if self._rng.random() < 0.92:
            fields["lead_id"] = deal.lead.id
        if self._rng.random() < 0.95:
            fields["reason"] = LOSS_REASONS[pick(self._rng, LOSS_CUM)]
        return "deal.lost", fields

    def _revenue(self, t: int, customer: Customer) -> Body:
        rng = self._rng
        nxt = self._later(t, MONTH_DAYS + rng.uniform(-1.0, 1.0))
        if nxt < customer.churn_at:
            self._push(nxt, REVENUE, customer)
        amount = round(customer.mrr * rng.uniform(0.95, 1.08), 2)  # usage on top of the subscription
        margin = round(min(0.85, max(0.6, customer.margin + rng.uniform(-0.02, 0.02))), 3)
        return "revenue.recorded", {"customer_id": customer.id, "amount": amount, "gross_margin": margin}

    def _churn(self, t: int, customer: Customer) -> Body:
        del self._active[customer.id]
        return "customer.churned", {"customer_id": customer.id}

    def _pick_rep(self) -> Rep:
        return self._reps[pick(self._rng, self._rep_cum)]


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
    return replace(config, leads_per_day=events_per_second * 86_400 / EVENTS_PER_LEAD)
