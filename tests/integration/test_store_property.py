"""Property: any delivery of an event set (duplicates, any order, any batching) applied to
the real Redis store reads back exactly as the batch reference computes it (DESIGN sections 2-4),
for append-only histories and for histories with contract v2 corrections alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kpi_state.events import EVENT_ADAPTER, Event
from kpi_state.periods import CALENDAR_WINDOWS, calendar_range
from kpi_state.report import KpiReader
from kpi_state.settings import Settings
from kpi_state.store import ApplyResult
from tests.conftest import SettingsFactory, StoreOpener
from tests.reference import assert_documents_match, reference_document

pytestmark = pytest.mark.integration

AS_OF = datetime(2026, 3, 31, 12, 34, 56, tzinfo=UTC)
RATES = "USD=0.92,GBP=1.17"
# Examples share the function-scoped namespace_family on purpose (a fresh namespace each).
# Fiscal years starting in January, in February (a quarter straddling the calendar year), in
# the quarter's middle month and in the month after AS_OF's.
FISCAL_STARTS = st.sampled_from((1, 2, 3, 4, 11))
PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

LEADS = ("L1", "L2", "L3", "L4", "L5")
DEALS = ("D1", "D2", "D3", "D4", "D5", "D6")
CUSTOMERS = ("C1", "C2", "C3", "C4")
REPS = ("alice", "bob", "carol")
SOURCES = ("web", "ads", "partner")
SEGMENTS = ("smb", "mid", "ent")
STAGES = ("prospecting", "qualification", "proposal", "negotiation")
# Event-id prefixes chosen so that code-point order differs from generation order and from
# most locale collations ("é" after "z", "B" before "a", "10" before "9").
ID_PREFIXES = ("a", "B", "é", "z", "10", "9", "Ω", "ev-")
# How the same instant is written: the offset in the text must not matter.
OFFSETS = (UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-7)))


def edge_instants(as_of: datetime, tz: ZoneInfo) -> list[datetime]:
    """Window starts and ends around ``as_of`` (and one second before each), at most 30 minutes
    after ``as_of``: events that late are still far inside every retention margin."""
    local = as_of.astimezone(tz)
    minute = as_of - timedelta(seconds=local.second, microseconds=local.microsecond)
    hour = minute - timedelta(minutes=local.minute)
    today = local.date()

    def midnight(days_back: int) -> datetime:
        return datetime.combine(today - timedelta(days=days_back), time(0), tzinfo=tz)

    bounds = [
        minute - timedelta(minutes=59),
        minute + timedelta(minutes=1),
        hour - timedelta(hours=23),
        hour + timedelta(hours=1),
        midnight(0),
        midnight(-1),
        midnight(6),
        midnight(29),
        midnight(89),
        as_of,
    ]
    # Calendar windows, for any fiscal year start: every month start of the last 25 months
    # (period starts) and the ends of the like-for-like previous periods.
    first = today.replace(day=1)
    bounds.extend(
        datetime.combine(date(m // 12, m % 12 + 1, 1), time(0), tzinfo=tz)
        for m in range(first.year * 12 + first.month - 1 - 24, first.year * 12 + first.month)
    )
    for fiscal in range(1, 13):
        for window in CALENDAR_WINDOWS:
            bounds.append(datetime.combine(calendar_range(window, today, fiscal)[1], time(0), tzinfo=tz))
    out = {b + d for b in bounds for d in (timedelta(0), timedelta(seconds=-1))}
    return sorted(t for t in out if t <= as_of + timedelta(minutes=30))


@st.composite
def crm_events(draw: st.DrawFn, as_of: datetime, tz: ZoneInfo) -> list[Event]:
    """A small, realistic, conflict-free CRM history of the ~40 days before ``as_of``, plus
    events on the window edges (back to the start of ``ytd_prev`` two years ago, at most 30 minutes
    after ``as_of``).

    At most one lead.created per lead, one deal.created and one terminal event per deal;
    every other combination (missing creations, wins with and without lead_id, stage
    changes with and without rep, several wins per customer, ...) is fair game.
    """
    shared = draw(st.lists(st.integers(0, 40 * 86_400), min_size=1, max_size=3))
    instants = st.one_of(
        # identical timestamps, so that "first" and "latest" are decided by event_id
        st.sampled_from([as_of - timedelta(seconds=s) for s in shared]),
        st.sampled_from(edge_instants(as_of, tz)),
        st.integers(0, 40 * 86_400_000).map(lambda ms: as_of - timedelta(milliseconds=ms)),
    )
    amounts = st.one_of(
        st.integers(0, 10_000_000).map(lambda cents: cents / 100),
        # up to the store's limit of 1e9 in the reporting currency (GBP is 1.17)
        st.integers(0, 850_000_000).map(float),
    )
    currencies = st.sampled_from((None, None, None, "EUR", "USD", "GBP"))

    def maybe(values: Sequence[str]) -> st.SearchStrategy[str | None]:
        return st.one_of(st.none(), st.sampled_from(values))

    events: list[dict[str, Any]] = []

    def emit(event_type: str, /, **fields: Any) -> None:
        instant = draw(instants).astimezone(draw(st.sampled_from(OFFSETS)))
        event_id = f"{draw(st.sampled_from(ID_PREFIXES))}{len(events)}"
        payload = {k: v for k, v in fields.items() if v is not None}
        events.append(
            {"type": event_type, "event_id": event_id, "occurred_at": instant.isoformat(), **payload}
        )

    for lead in LEADS:
        if draw(st.booleans()):
            emit(
                "lead.created",
                lead_id=lead,
                source=draw(maybe(SOURCES)),
                segment=draw(maybe(SEGMENTS)),
                rep_id=draw(maybe(REPS)),
            )
        for _ in range(draw(st.integers(0, 2))):
            emit("lead.qualified", lead_id=lead)

    for deal in DEALS:
        if draw(st.integers(0, 3)) > 0:
            emit(
                "deal.created",
                deal_id=deal,
                rep_id=draw(st.sampled_from(REPS)),
                amount=draw(amounts),
                currency=draw(currencies),
                lead_id=draw(maybe(LEADS)),
                stage=draw(maybe(STAGES)),
            )
        for _ in range(draw(st.integers(0, 3))):
            priced = draw(st.booleans())
            emit(
                "deal.stage_changed",
                deal_id=deal,
                to_stage=draw(st.sampled_from(STAGES)),
                from_stage=draw(maybe(STAGES)),
                rep_id=draw(maybe(REPS)),
                amount=draw(amounts) if priced else None,
                currency=draw(currencies) if priced else None,
            )
        outcome = draw(st.sampled_from(("open", "won", "won", "lost")))
        if outcome == "won":
            emit(
                "deal.won",
                deal_id=deal,
                customer_id=draw(st.sampled_from(CUSTOMERS)),
                rep_id=draw(st.sampled_from(REPS)),
                amount=draw(amounts),
                currency=draw(currencies),
                lead_id=draw(maybe(LEADS)),
            )
        elif outcome == "lost":
            emit(
                "deal.lost",
                deal_id=deal,
                rep_id=draw(st.sampled_from(REPS)),
                lead_id=draw(maybe(LEADS)),
                reason=draw(st.sampled_from((None, "price", "timing"))),
            )

    for _ in range(draw(st.integers(0, 3))):
        emit("customer.churned", customer_id=draw(st.sampled_from(CUSTOMERS)))
    for _ in range(draw(st.integers(0, 4))):
        emit(
            "spend.recorded",
            amount=draw(amounts),
            currency=draw(currencies),
            category=draw(st.sampled_from(("marketing", "sales"))),
            source=draw(maybe(SOURCES)),
        )
    for _ in range(draw(st.integers(0, 4))):
        emit(
            "revenue.recorded",
            customer_id=draw(st.sampled_from(CUSTOMERS)),
            amount=draw(amounts),
            currency=draw(currencies),
            gross_margin=draw(st.one_of(st.none(), st.integers(0, 100).map(lambda p: p / 100))),
        )
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(("nps", "csat")))
        score = draw(st.integers(0, 10) if kind == "nps" else st.integers(1, 5))
        emit("survey.answered", kind=kind, score=score, customer_id=draw(maybe(CUSTOMERS)))
    return [EVENT_ADAPTER.validate_python(e) for e in events]


@st.composite
def crm_corrections(draw: st.DrawFn, as_of: datetime, tz: ZoneInfo) -> list[Event]:
    """A conflict-free CRM history with contract v2 corrections (DESIGN section 2 "Corrections").

    At most one lead.created per lead and one deal.created per deal (a bare one too); every
    other event any number of times, at any instant, so that every interleaving occurs: reopen /
    re-win cycles by other reps for other amounts, won then lost, amount and currency edits
    before and after the outcome, owner changes, re-links, lead edits, deletions and restores of
    leads and deals, and updates of records never created.
    """
    shared = draw(st.lists(st.integers(0, 40 * 86_400), min_size=1, max_size=3))
    instants = st.one_of(
        # identical timestamps, so that "first" and "latest" are decided by event_id
        st.sampled_from([as_of - timedelta(seconds=s) for s in shared]),
        st.sampled_from(edge_instants(as_of, tz)),
        st.integers(0, 40 * 86_400_000).map(lambda ms: as_of - timedelta(milliseconds=ms)),
    )
    amounts = st.one_of(
        st.integers(0, 10_000_000).map(lambda cents: cents / 100),
        # a raw number re-priced in GBP (1.17) by a currency-only edit stays under 1e9
        st.integers(0, 850_000_000).map(float),
    )
    currencies = st.sampled_from((None, None, "EUR", "USD", "GBP"))

    def maybe(values: Sequence[str]) -> st.SearchStrategy[str | None]:
        return st.one_of(st.none(), st.sampled_from(values))

    def some_of(fields: dict[str, st.SearchStrategy[Any]]) -> dict[str, Any]:
        """A non-empty subset of ``fields``: an update must state something."""
        return draw(st.fixed_dictionaries({}, optional=fields).filter(bool))

    events: list[dict[str, Any]] = []

    def emit(event_type: str, /, **fields: Any) -> None:
        instant = draw(instants).astimezone(draw(st.sampled_from(OFFSETS)))
        event_id = f"{draw(st.sampled_from(ID_PREFIXES))}{len(events)}"
        payload = {k: v for k, v in fields.items() if v is not None}
        events.append(
            {"type": event_type, "event_id": event_id, "occurred_at": instant.isoformat(), **payload}
        )

    def deletions(**entity: str) -> None:
        kind = next(iter(entity))[: -len("_id")]
        for _ in range(draw(st.integers(0, 2))):
            emit(f"{kind}.{draw(st.sampled_from(('deleted', 'restored')))}", **entity)

    for lead in LEADS:
        if draw(st.booleans()):
            emit(
                "lead.created",
                lead_id=lead,
                source=draw(maybe(SOURCES)),
                segment=draw(maybe(SEGMENTS)),
                rep_id=draw(maybe(REPS)),
            )
        for _ in range(draw(st.integers(0, 1))):
            emit("lead.qualified", lead_id=lead)
        for _ in range(draw(st.integers(0, 2))):
            stated = {
                "source": st.sampled_from(SOURCES),
                "segment": st.sampled_from(SEGMENTS),
                "rep_id": st.sampled_from(REPS),
            }
            emit("lead.updated", lead_id=lead, **some_of(stated))
        deletions(lead_id=lead)

    for deal in DEALS:
        if draw(st.integers(0, 3)) > 0:
            priced = draw(st.booleans())
            emit(
                "deal.created",
                deal_id=deal,
                rep_id=draw(maybe(REPS)),
                amount=draw(amounts) if priced else None,
                currency=draw(currencies),  # without an amount it states nothing
                lead_id=draw(maybe(LEADS)),
                stage=draw(maybe(STAGES)),
            )
        for _ in range(draw(st.integers(0, 2))):
            priced = draw(st.booleans())
            emit(
                "deal.stage_changed",
                deal_id=deal,
                to_stage=draw(st.sampled_from(STAGES)),
                rep_id=draw(maybe(REPS)),
                amount=draw(amounts) if priced else None,
                currency=draw(currencies) if priced else None,
            )
        for _ in range(draw(st.integers(0, 4))):
            outcome = draw(st.sampled_from(("won", "won", "lost", "reopened")))
            if outcome == "won":
                emit(
                    "deal.won",
                    deal_id=deal,
                    customer_id=draw(st.sampled_from(CUSTOMERS)),
                    rep_id=draw(st.sampled_from(REPS)),
                    amount=draw(amounts),
                    currency=draw(currencies),
                    lead_id=draw(maybe(LEADS)),
                )
            elif outcome == "lost":
                emit(
                    "deal.lost", deal_id=deal, rep_id=draw(st.sampled_from(REPS)), lead_id=draw(maybe(LEADS))
                )
            else:
                emit("deal.reopened", deal_id=deal, stage=draw(maybe(STAGES)), rep_id=draw(maybe(REPS)))
        for _ in range(draw(st.integers(0, 3))):
            stated = {
                "amount": amounts,
                "currency": st.sampled_from(("EUR", "USD", "GBP")),  # alone: a currency-only edit
                "rep_id": st.sampled_from(REPS),
                "lead_id": st.sampled_from(LEADS),
            }
            emit("deal.updated", deal_id=deal, **some_of(stated))
        deletions(deal_id=deal)

    for _ in range(draw(st.integers(0, 2))):
        emit("customer.churned", customer_id=draw(st.sampled_from(CUSTOMERS)))
    for _ in range(draw(st.integers(0, 2))):
        emit("spend.recorded", amount=draw(amounts), category="marketing", source=draw(maybe(SOURCES)))
    return [EVENT_ADAPTER.validate_python(e) for e in events]


def any_history(as_of: datetime, tz: ZoneInfo) -> st.SearchStrategy[list[Event]]:
    """Either kind of history: the append-only one of contract v1, or one with corrections."""
    return st.one_of(crm_events(as_of, tz), crm_corrections(as_of, tz))


@st.composite
def deliveries(draw: st.DrawFn, events: list[Event]) -> list[list[Event]]:
    """The events with exact duplicates added, in any order, cut into batches of any size."""
    copies = draw(st.lists(st.sampled_from(events), max_size=len(events))) if events else []
    stream = draw(st.permutations([*events, *copies]))
    batches: list[list[Event]] = []
    while stream:
        size = draw(st.integers(1, max(1, len(stream))))
        batches.append(stream[:size])
        stream = stream[size:]
    return batches


async def apply_and_read(
    open_store: StoreOpener, settings_: Settings, batches: list[list[Event]], as_of: datetime
) -> tuple[dict[str, Any], list[ApplyResult]]:
    # namespace_family deletes every example's keys at the end of the test
    async with open_store(settings_, clear=False) as store:
        results = [await store.apply(batch) for batch in batches]
        return await KpiReader(store, settings_).document(as_of), results


def check(
    open_store: StoreOpener,
    settings_: Settings,
    events: list[Event],
    batches: list[list[Event]],
    as_of: datetime,
) -> None:
    document, results = asyncio.run(apply_and_read(open_store, settings_, batches, as_of))
    delivered = [e for batch in batches for e in batch]
    assert [r.rejected for r in results if r.rejected] == []
    assert sum(r.applied for r in results) == len(events)
    assert sum(r.duplicates for r in results) == len(delivered) - len(events)
    assert_documents_match(document, reference_document(delivered, settings_, as_of))


@settings(PROPERTY, max_examples=150)
@given(data=st.data())
def test_any_delivery_reads_as_the_reference(
    data: st.DataObject, namespace_family: SettingsFactory, open_store: StoreOpener
) -> None:
    fiscal = data.draw(FISCAL_STARTS, label="fiscal year start month")
    settings_ = namespace_family(
        currency_rates=RATES, default_gross_margin=0.6, fiscal_year_start_month=fiscal
    )
    events = data.draw(crm_events(AS_OF, settings_.tz), label="events")
    batches = data.draw(deliveries(events), label="batches")
    check(open_store, settings_, events, batches, AS_OF)


@settings(PROPERTY, max_examples=400)
@given(data=st.data())
def test_any_delivery_of_corrections_reads_as_the_reference(
    data: st.DataObject, namespace_family: SettingsFactory, open_store: StoreOpener
) -> None:
    """Contract v2: reopen/re-win cycles, edits, owner changes, re-links, deletions and restores."""
    fiscal = data.draw(FISCAL_STARTS, label="fiscal year start month")
    settings_ = namespace_family(
        currency_rates=RATES, default_gross_margin=0.6, fiscal_year_start_month=fiscal
    )
    events = data.draw(crm_corrections(AS_OF, settings_.tz), label="events")
    batches = data.draw(deliveries(events), label="batches")
    check(open_store, settings_, events, batches, AS_OF)


BERLIN_AS_OFS = (
    datetime(2026, 3, 30, 0, 30, tzinfo=UTC),  # 02:30 CEST, the day after the 23-hour day
    datetime(2026, 3, 29, 22, 15, 30, tzinfo=UTC),  # 00:15:30 local, UTC is still on the 29th
    datetime(2026, 10, 26, 11, 0, tzinfo=UTC),  # the day after the 25-hour day
)


@settings(PROPERTY, max_examples=120)
@given(data=st.data())
def test_any_delivery_in_a_dst_timezone(
    data: st.DataObject, namespace_family: SettingsFactory, open_store: StoreOpener
) -> None:
    fiscal = data.draw(FISCAL_STARTS, label="fiscal year start month")
    settings_ = namespace_family(
        timezone="Europe/Berlin", currency_rates=RATES, fiscal_year_start_month=fiscal
    )
    as_of = data.draw(st.sampled_from(BERLIN_AS_OFS), label="as_of")
    events = data.draw(any_history(as_of, settings_.tz), label="events")
    batches = data.draw(deliveries(events), label="batches")
    check(open_store, settings_, events, batches, as_of)


@settings(PROPERTY, max_examples=120)
@given(data=st.data())
def test_reading_later_as_of(
    data: st.DataObject, namespace_family: SettingsFactory, open_store: StoreOpener
) -> None:
    """Reading well after the newest event: windows slide over the same buckets."""
    fiscal = data.draw(FISCAL_STARTS, label="fiscal year start month")
    settings_ = namespace_family(currency_rates=RATES, fiscal_year_start_month=fiscal)
    events = data.draw(any_history(AS_OF, settings_.tz), label="events")
    batches = data.draw(deliveries(events), label="batches")
    later = data.draw(st.integers(30 * 60, 55 * 86_400), label="seconds after AS_OF")
    check(open_store, settings_, events, batches, AS_OF + timedelta(seconds=later))
