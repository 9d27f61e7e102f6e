"""Validated events -> the compact facts lua/apply.lua reads (see ARGV[3] of its header).

Pure: bucket ids precomputed, money in integer micro-units of the reporting currency,
defaults filled in. ``KpiStore.prepare`` sends what this builds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from kpi_state import events as ev
from kpi_state.events import Rejection
from kpi_state.kpis import MICROS
from kpi_state.settings import Settings
from kpi_state.windows import BucketClock, epoch_micros


def _micros(amount: float) -> int:
    return round(amount * MICROS)


class FactBuilder:
    """Turns validated events into the compact facts apply.lua reads (bucket ids precomputed,
    money in integer micro-units of the reporting currency, defaults filled in)."""

    def __init__(self, settings: Settings, parser: ev.EventParser | None = None) -> None:
        self._clock = BucketClock(settings.tz)
        self._parser = parser or ev.EventParser(settings)
        self._first_stage = settings.stage_names[0]
        self._margin = settings.default_gross_margin
        self._currency = settings.currency

    def amount_error(self, event: ev.Event) -> Rejection | None:
        """The store refuses amounts it cannot keep exactly (``EventParser.amount_error``)."""
        return self._parser.amount_error(event)

    def _amount(self, event: ev.MoneyEvent) -> int:
        assert event.amount is not None
        return _micros(self._parser.amount_in_reporting(event.amount, event.currency))

    def _deal_amount(
        self, e: ev.DealCreated | ev.DealStageChanged | ev.DealWon | ev.DealUpdated, f: dict[str, Any]
    ) -> None:
        """A deal's amount statement: ``a`` in reporting micro-units; in another currency also the
        raw micro-units ``ar`` and the rate ``rt``, so a later currency-only statement can
        re-express the same number (apply.lua ``amount_now``)."""
        if e.amount is None:
            return
        f["a"] = self._amount(e)
        if e.currency is not None and e.currency != self._currency:
            f["ar"] = _micros(e.amount)
            f["rt"] = self._parser.amount_in_reporting(1.0, e.currency)

    def fact(self, event: ev.Event) -> dict[str, Any]:
        micros = epoch_micros(event.occurred_at)
        b = self._clock.bucket_ids(event.occurred_at, micros)
        f: dict[str, Any] = {
            "i": event.event_id,
            "y": event.code,  # apply_handlers.lua dispatches on it
            "t": micros,
            "m": str(b.minute),
            "h": str(b.hour),
            "d": str(b.day),
            "mo": str(b.month),
        }
        self._fields[type(event)](self, event, f)
        return f

    # Type-specific fields, dispatched on the exact class (a match over ten classes costs more
    # per event than the rest of the fact). apply.lua tests flags for truth, so a false flag is
    # left out rather than sent.

    def _lead_created(self, e: ev.LeadCreated, f: dict[str, Any]) -> None:
        f["l"] = e.lead_id
        f["r"] = e.rep_id or "unassigned"
        f["s"] = e.source or "unknown"
        f["g"] = e.segment or "unknown"

    def _lead_qualified(self, e: ev.LeadQualified, f: dict[str, Any]) -> None:
        f["l"] = e.lead_id

    def _deal_created(self, e: ev.DealCreated, f: dict[str, Any]) -> None:
        f["k"] = e.deal_id
        if e.rep_id is not None:
            f["r"] = e.rep_id
        self._deal_amount(e, f)
        f["st"] = e.stage or self._first_stage
        if e.lead_id is not None:
            f["l"] = e.lead_id

    def _deal_stage_changed(self, e: ev.DealStageChanged, f: dict[str, Any]) -> None:
        f["k"] = e.deal_id
        f["st"] = e.to_stage
        if e.rep_id is not None:
            f["r"] = e.rep_id
        self._deal_amount(e, f)

    def _deal_won(self, e: ev.DealWon, f: dict[str, Any]) -> None:
        f["k"] = e.deal_id
        f["c"] = e.customer_id
        f["r"] = e.rep_id
        self._deal_amount(e, f)
        if e.lead_id is not None:
            f["l"] = e.lead_id

    def _deal_lost(self, e: ev.DealLost, f: dict[str, Any]) -> None:
        f["k"] = e.deal_id
        f["r"] = e.rep_id
        if e.lead_id is not None:
            f["l"] = e.lead_id

    def _spend_recorded(self, e: ev.SpendRecorded, f: dict[str, Any]) -> None:
        f["a"] = self._amount(e)
        f["cat"] = e.category
        f["s"] = e.source or "unknown"

    def _revenue_recorded(self, e: ev.RevenueRecorded, f: dict[str, Any]) -> None:
        amount = self._parser.amount_in_reporting(e.amount, e.currency)
        margin = self._margin if e.gross_margin is None else e.gross_margin
        f["c"] = e.customer_id
        f["a"] = _micros(amount)
        f["x"] = _micros(amount * margin)

    def _customer_churned(self, e: ev.CustomerChurned, f: dict[str, Any]) -> None:
        f["c"] = e.customer_id

    def _survey_answered(self, e: ev.SurveyAnswered, f: dict[str, Any]) -> None:
        f["kind"] = e.kind
        if e.kind == "nps":
            if e.score >= 9:
                f["p"] = True
            if e.score <= 6:
                f["q"] = True
        elif e.score >= 4:
            f["p"] = True

    def _lead_updated(self, e: ev.LeadUpdated, f: dict[str, Any]) -> None:
        f["l"] = e.lead_id
        if e.rep_id is not None:
            f["r"] = e.rep_id
        if e.source is not None:
            f["s"] = e.source
        if e.segment is not None:
            f["g"] = e.segment

    def _lead_only(self, e: ev.LeadDeleted | ev.LeadRestored, f: dict[str, Any]) -> None:
        f["l"] = e.lead_id

    def _deal_updated(self, e: ev.DealUpdated, f: dict[str, Any]) -> None:
        f["k"] = e.deal_id
        if e.rep_id is not None:
            f["r"] = e.rep_id
        if e.lead_id is not None:
            f["l"] = e.lead_id
        if e.amount is not None:
            self._deal_amount(e, f)
        elif e.currency is not None:  # the same number, in another currency from now on
            f["cu"] = self._parser.amount_in_reporting(1.0, e.currency)

    def _deal_reopened(self, e: ev.DealReopened, f: dict[str, Any]) -> None:
        f["k"] = e.deal_id
        if e.stage is not None:
            f["st"] = e.stage
        if e.rep_id is not None:
            f["r"] = e.rep_id

    def _deal_only(self, e: ev.DealDeleted | ev.DealRestored, f: dict[str, Any]) -> None:
        f["k"] = e.deal_id

    _fields: ClassVar[dict[type, Callable[[FactBuilder, Any, dict[str, Any]], None]]] = {
        ev.LeadCreated: _lead_created,
        ev.LeadQualified: _lead_qualified,
        ev.DealCreated: _deal_created,
        ev.DealStageChanged: _deal_stage_changed,
        ev.DealWon: _deal_won,
        ev.DealLost: _deal_lost,
        ev.SpendRecorded: _spend_recorded,
        ev.RevenueRecorded: _revenue_recorded,
        ev.CustomerChurned: _customer_churned,
        ev.SurveyAnswered: _survey_answered,
        ev.LeadUpdated: _lead_updated,
        ev.LeadDeleted: _lead_only,
        ev.LeadRestored: _lead_only,
        ev.DealUpdated: _deal_updated,
        ev.DealReopened: _deal_reopened,
        ev.DealDeleted: _deal_only,
        ev.DealRestored: _deal_only,
    }
