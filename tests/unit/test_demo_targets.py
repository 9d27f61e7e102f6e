"""`kpi demo`'s sample targets: sized from the history, valid, with reps on both sides of pace."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from kpi_app.demo_targets import sample_targets
from kpi_app.simulation import SimConfig, simulate_history
from kpi_state.settings import Settings


def test_sample_targets_cover_this_month_and_quarter() -> None:
    settings = Settings(fiscal_year_start_month=2)
    now = datetime(2026, 11, 15, 12, tzinfo=UTC)
    events = list(
        simulate_history(
            SimConfig(seed=3, stages=settings.stage_names), start=now - timedelta(days=40), end=now
        )
    )
    targets = sample_targets(events, now, settings)
    assert [(t.kpi, t.period, t.scope) for t in targets[:3]] == [
        ("revenue_won", "2026-11", "total"),
        ("deals_won", "2026-11", "total"),
        ("leads", "2026-Q4", "total"),  # fiscal from February: Q4 is Nov-Jan
    ]
    reps = targets[3:]
    assert 2 <= len(reps) <= 8 and all(t.scope.startswith("rep:") and t.value > 0 for t in reps)
    since = now - timedelta(days=30)
    won = [
        e
        for e in events
        if e["type"] == "deal.won" and datetime.fromisoformat(str(e["occurred_at"])) >= since
    ]
    team = sum(float(e["amount"]) for e in won)  # type: ignore[arg-type]
    assert targets[0].value == round(team * 30 / 30 * 1.1, -3)  # November has 30 days
    assert targets[1].value == len(won)


def test_a_history_without_wins_still_gets_rep_targets() -> None:
    settings = Settings()
    now = datetime(2026, 11, 15, 12, tzinfo=UTC)
    at = (now - timedelta(days=2)).isoformat()
    events: list[dict[str, object]] = [
        {"type": "deal.created", "occurred_at": at, "deal_id": "D1", "rep_id": "ann", "amount": 3000.0},
        {"type": "deal.created", "occurred_at": at, "deal_id": "D2", "rep_id": "bob", "amount": 6000.0},
    ]
    targets = sample_targets(events, now, settings)
    assert [(t.scope, t.value) for t in targets if t.scope.startswith("rep:")] == [
        ("rep:bob", 2000.0 * 0.8),  # a third of the value created, x the first stretch
        ("rep:ann", 1000.0),
    ]
    assert targets[0].value == 3000.0  # (1000 + 2000) x 30/30 x 1.1, to the thousand
