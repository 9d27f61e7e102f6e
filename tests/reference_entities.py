"""Contract v2 for the test oracle: the current view of every lead and deal.

DESIGN section 2 "Corrections" as read in docs/corrections.md: every attribute of a lead or a
deal is the value of its latest statement (``occurred_at``, ties by ``event_id`` in code-point
order). The oracle sees every applied event at once, so each attribute is one plain ``max`` over
the events that state it. Nothing here is incremental.

Team decisions beyond the text (the engine must match them):

- ``lead.created`` states all three lead attributes (absent: ``unknown``/``unassigned``);
  ``lead.updated`` only those it carries. A lead's attributes are its stated ones even without
  ``lead.created``; with no statement at all they are the defaults.
- A deal's amount comes from its latest amount statement, converted with that event's currency.
  A ``deal.updated`` with ``currency`` alone, later than that statement, re-prices the same raw
  number in the new currency. Every amount statement states its currency too (none: the
  reporting one); a ``currency`` on an event that states no amount (``deal.created`` or
  ``deal.stage_changed`` without ``amount``) states nothing. A deal with no amount is worth 0.
- ``deal.reopened`` without ``stage`` leaves the stage as it is; a reopen is no stage entry.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from kpi_state.events import (
    DealCreated,
    DealDeleted,
    DealLost,
    DealReopened,
    DealRestored,
    DealStageChanged,
    DealUpdated,
    DealWon,
    Event,
    LeadCreated,
    LeadDeleted,
    LeadQualified,
    LeadRestored,
    LeadUpdated,
)
from kpi_state.settings import Settings

UNASSIGNED, UNKNOWN = "unassigned", "unknown"

LeadEvent = LeadCreated | LeadQualified | LeadUpdated | LeadDeleted | LeadRestored
DealEvent = (
    DealCreated
    | DealStageChanged
    | DealWon
    | DealLost
    | DealUpdated
    | DealReopened
    | DealDeleted
    | DealRestored
)
LEAD_EVENTS = (LeadCreated, LeadQualified, LeadUpdated, LeadDeleted, LeadRestored)
DEAL_EVENTS = (
    DealCreated,
    DealStageChanged,
    DealWon,
    DealLost,
    DealUpdated,
    DealReopened,
    DealDeleted,
    DealRestored,
)

# Which events state a deal's owner, lead and amount (docs/corrections.md, "The rule").
OWNER_STATEMENTS = (DealCreated, DealUpdated, DealWon, DealLost, DealReopened)
LEAD_STATEMENTS = (DealCreated, DealUpdated, DealWon, DealLost)
AMOUNT_STATEMENTS = (DealCreated, DealStageChanged, DealUpdated, DealWon)

E = TypeVar("E", bound=Event)
V = TypeVar("V")


def order_key(e: Event) -> tuple[datetime, str]:
    """ "First" and "latest": by occurred_at, ties by event_id in code-point order."""
    return (e.occurred_at, e.event_id)


def latest_value(statements: Iterable[tuple[Event, V]], default: V) -> V:
    """The value of the latest (event, value) statement, else ``default``."""
    best = max(statements, key=lambda pair: order_key(pair[0]), default=None)
    return default if best is None else best[1]


def of_type(events: Iterable[Event], kind: type[E]) -> list[E]:
    return [e for e in events if isinstance(e, kind)]


def carried(events: Iterable[Event], field: str) -> list[tuple[Event, str]]:
    """(event, value) for each event that carries ``field`` (absent and null state nothing)."""
    return [(e, v) for e in events if (v := getattr(e, field, None)) is not None]


def is_deleted(events: Sequence[Event], deleted: type[Event], restored: type[Event]) -> bool:
    """The latest of the record's deletions and restores is a deletion."""
    marks = [(e, isinstance(e, deleted)) for e in events if isinstance(e, deleted | restored)]
    return latest_value(marks, False)


# --------------------------------------------------------------------------- leads


@dataclass(frozen=True)
class LeadView:
    lead_id: str
    created: LeadCreated | None
    first_qualified: LeadQualified | None
    rep: str
    source: str
    segment: str
    deleted: bool


def lead_view(lead_id: str, events: Sequence[LeadEvent]) -> LeadView:
    """``events``: the lead's applied events (one ``lead.created`` at most)."""
    created = next(iter(of_type(events, LeadCreated)), None)
    updates = of_type(events, LeadUpdated)

    def attribute(field: str, default: str) -> str:
        stated: list[tuple[Event, str]] = []
        if created is not None:
            stated.append((created, getattr(created, field) or default))
        stated += carried(updates, field)
        return latest_value(stated, default)

    return LeadView(
        lead_id=lead_id,
        created=created,
        first_qualified=min(of_type(events, LeadQualified), key=order_key, default=None),
        rep=attribute("rep_id", UNASSIGNED),
        source=attribute("source", UNKNOWN),
        segment=attribute("segment", UNKNOWN),
        deleted=is_deleted(events, LeadDeleted, LeadRestored),
    )


def default_lead(lead_id: str) -> LeadView:
    """A lead named by a deal but stating nothing of its own."""
    return LeadView(lead_id, None, None, UNASSIGNED, UNKNOWN, UNKNOWN, False)


# --------------------------------------------------------------------------- deals


@dataclass(frozen=True)
class DealView:
    deal_id: str
    created: DealCreated | None
    stage_changes: tuple[DealStageChanged, ...]
    owner: str
    lead_id: str | None
    amount: float  # the current amount in the reporting currency
    stage: str | None  # None: no event states one (then the deal was never created)
    outcome: DealWon | DealLost | None  # the outcome event; None while the deal is open
    deleted: bool

    @property
    def won(self) -> DealWon | None:
        return self.outcome if isinstance(self.outcome, DealWon) else None

    @property
    def lost(self) -> DealLost | None:
        return self.outcome if isinstance(self.outcome, DealLost) else None


def deal_view(deal_id: str, events: Sequence[DealEvent], settings: Settings) -> DealView:
    """``events``: the deal's applied events (one ``deal.created`` at most)."""
    created = next(iter(of_type(events, DealCreated)), None)
    changes = of_type(events, DealStageChanged)

    def rate(currency: str | None) -> float:
        return 1.0 if currency is None or currency == settings.currency else settings.rates[currency]

    owners = carried([e for e in events if isinstance(e, OWNER_STATEMENTS)], "rep_id")
    leads = carried([e for e in events if isinstance(e, LEAD_STATEMENTS)], "lead_id")
    priced = [e for e in events if isinstance(e, AMOUNT_STATEMENTS) and e.amount is not None]
    raw_amount = latest_value([(e, e.amount) for e in priced], None)
    # Currency: every amount statement states its own (none: the reporting one); a deal.updated
    # with currency alone states the currency of the amount the deal already has.
    currencies: list[tuple[Event, str | None]] = [(e, e.currency) for e in priced]
    currencies += [(u, u.currency) for u in of_type(events, DealUpdated) if u.amount is None and u.currency]
    currency = latest_value(currencies, None)
    amount = 0.0 if raw_amount is None else float(raw_amount) * rate(currency)

    stages: list[tuple[Event, str]] = []
    if created is not None:
        stages.append((created, created.stage or settings.stage_names[0]))
    stages += [(c, c.to_stage) for c in changes]
    stages += carried(of_type(events, DealReopened), "stage")

    outcomes = [e for e in events if isinstance(e, DealWon | DealLost | DealReopened)]
    latest_outcome = max(outcomes, key=order_key, default=None)
    return DealView(
        deal_id=deal_id,
        created=created,
        stage_changes=tuple(changes),
        owner=latest_value(owners, UNASSIGNED),
        lead_id=latest_value(leads, None),
        amount=amount,
        stage=latest_value(stages, None),
        outcome=latest_outcome if isinstance(latest_outcome, DealWon | DealLost) else None,
        deleted=is_deleted(events, DealDeleted, DealRestored),
    )


# --------------------------------------------------------------------------- all of them


@dataclass(frozen=True)
class Entities:
    leads: dict[str, LeadView]
    deals: dict[str, DealView]

    def lead(self, lead_id: str) -> LeadView:
        return self.leads.get(lead_id) or default_lead(lead_id)

    def deal_lead(self, deal: DealView) -> LeadView | None:
        """The deal's current lead, None when it has none or that lead is deleted."""
        if deal.lead_id is None:
            return None
        lead = self.lead(deal.lead_id)
        return None if lead.deleted else lead

    def deal_dims(self, deal: DealView) -> tuple[str, str, str]:
        """(rep, source, segment) of every deal KPI: the owner, the current lead's source/segment."""
        lead = self.deal_lead(deal)
        if lead is None:
            return deal.owner, UNKNOWN, UNKNOWN
        return deal.owner, lead.source, lead.segment

    def live_won_deals(self) -> list[DealView]:
        """Deals not deleted whose outcome is won now."""
        return [d for d in self.deals.values() if not d.deleted and d.won is not None]


def group(events: Iterable[E], key: Callable[[E], str]) -> dict[str, list[E]]:
    out: dict[str, list[E]] = defaultdict(list)
    for e in events:
        out[key(e)].append(e)
    return out


def resolve(applied: Sequence[Event], settings: Settings) -> Entities:
    """The views of every lead and deal that some applied event names as its subject."""
    lead_events: list[LeadEvent] = [e for e in applied if isinstance(e, LEAD_EVENTS)]
    deal_events: list[DealEvent] = [e for e in applied if isinstance(e, DEAL_EVENTS)]
    return Entities(
        leads={i: lead_view(i, es) for i, es in group(lead_events, lambda e: e.lead_id).items()},
        deals={i: deal_view(i, es, settings) for i, es in group(deal_events, lambda e: e.deal_id).items()},
    )
