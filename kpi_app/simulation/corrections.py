"""The CRM's later edits in the simulation (contract v2, docs/corrections.md): a lead's source
fixed, a duplicate merged away, an owner reassigned, a deal deleted (sometimes restored), an
amount corrected, a won deal reopened and then won again or lost.

``CorrectionSteps`` holds their step handlers; ``LiveSimulator`` (kpi_app.simulation.generator)
inherits them and schedules them. Every draw comes from ``_fix``, a random stream of their own,
so a history is the same with or without corrections apart from the corrections themselves.
"""

from __future__ import annotations

import random

from kpi_app.simulation.model import (
    EMIT,
    LOSS_CUM,
    LOSS_REASONS,
    MERGE,
    RELOST_DEAL,
    RESTORE,
    RESTORE_DEAL,
    REWIN,
    REWIN_DEAL,
    SOURCES,
    Body,
    Deal,
    Lead,
    Rep,
    pick,
)


class CorrectionSteps:
    """Step handlers of the corrections. The engine provides the state and scheduling below."""

    _fix: random.Random
    _reps: list[Rep]
    _stages: tuple[str, ...]

    def _push(self, t: int, kind: int, obj: object) -> None:
        raise NotImplementedError  # the engine's heap

    def _fix_later(self, t: int, low: float, high: float) -> int:
        raise NotImplementedError  # the engine's calendar

    def _other_rep(self, name: str) -> str:
        others = [r.name for r in self._reps if r.name != name]
        return self._fix.choice(others) if others else name

    def _fix_lead(self, t: int, lead: Lead) -> Body:
        others = [src for src in SOURCES if src is not lead.source]
        return "lead.updated", {"lead_id": lead.id, "source": self._fix.choice(others).name}

    def _dup_lead(self, t: int, lead: Lead) -> Body:
        lead.duplicate = f"{lead.id}-dup"
        self._push(self._fix_later(t, 1.0, 4.0), MERGE, lead)
        fields: dict[str, object] = {"lead_id": lead.duplicate, "source": lead.source.name}
        return "lead.created", {**fields, "segment": lead.segment.name}

    def _merge(self, t: int, lead: Lead) -> Body:
        """The duplicate merged into the lead: its deals re-linked, then it is deleted."""
        assert lead.duplicate is not None
        for deal_id in lead.duplicate_deals:
            self._push(t, EMIT, ("deal.updated", {"deal_id": deal_id, "lead_id": lead.id}))
        duplicate, lead.duplicate, lead.duplicate_deals = lead.duplicate, None, []
        return "lead.deleted", {"lead_id": duplicate}

    def _reassign(self, t: int, deal: Deal) -> Body:
        deal.owner = self._other_rep(deal.owner)  # later events of the deal name the new owner
        return "deal.updated", {"deal_id": deal.id, "rep_id": deal.owner}

    def _delete(self, t: int, deal: Deal) -> Body:
        if self._fix.random() < RESTORE:
            self._push(self._fix_later(t, 0.2, 2.0), RESTORE_DEAL, deal)
        return "deal.deleted", {"deal_id": deal.id}

    def _restore(self, t: int, deal: Deal) -> Body:
        return "deal.restored", {"deal_id": deal.id}

    def _amend(self, t: int, deal: Deal) -> Body:
        deal.amount = round(deal.amount * self._fix.uniform(0.85, 1.1), 2)
        return "deal.updated", {"deal_id": deal.id, "amount": deal.amount}

    def _reopen(self, t: int, deal: Deal) -> Body:
        fix = self._fix
        when = self._fix_later(t, 2.0, 20.0)
        self._push(when, REWIN_DEAL if fix.random() < REWIN else RELOST_DEAL, deal)
        return "deal.reopened", {"deal_id": deal.id, "stage": self._stages[-1]}

    def _rewin(self, t: int, deal: Deal) -> Body:
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

    def _relost(self, t: int, deal: Deal) -> Body:
        reason = LOSS_REASONS[pick(self._fix, LOSS_CUM)]
        return "deal.lost", {
            "deal_id": deal.id,
            "rep_id": deal.owner,
            "lead_id": deal.lead.id,
            "reason": reason,
        }
