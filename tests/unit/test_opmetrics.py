"""Operational kpi_* metrics on an injected registry; pure, no server."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry

from kpi_state import events as ev
from kpi_state.events import Rejection
from kpi_state.kpis import DIMENSIONS
from kpi_state.opmetrics import OpMetrics
from kpi_state.store import ApplyResult, Outcome, SourcedEvent

A, D, R, C = Outcome.APPLIED, Outcome.DUPLICATE, Outcome.REDELIVERED, Outcome.CONFLICT

AT = "2026-03-01T09:30:00Z"


def lead(i: int) -> ev.LeadCreated:
    return ev.LeadCreated.model_validate(
        {"type": "lead.created", "event_id": f"l{i}", "occurred_at": AT, "lead_id": f"L{i}"}
    )


def churn(i: int) -> ev.CustomerChurned:
    return ev.CustomerChurned.model_validate(
        {"type": "customer.churned", "event_id": f"c{i}", "occurred_at": AT, "customer_id": f"C{i}"}
    )


def test_nothing_touches_the_global_registry() -> None:
    before = {m.name for m in REGISTRY.collect()}
    OpMetrics(CollectorRegistry())
    OpMetrics(CollectorRegistry())  # a second instance does not clash either
    assert {m.name for m in REGISTRY.collect()} == before


def test_every_type_starts_at_zero() -> None:
    reg = CollectorRegistry()
    OpMetrics(reg)
    for kind in ev.EVENT_TYPES:
        assert reg.get_sample_value("kpi_events_processed_total", {"type": kind}) == 0


def test_record_apply_exact_batch() -> None:
    reg = CollectorRegistry()
    ops = OpMetrics(reg)
    events = [lead(1), lead(2), churn(1)]
    result = ApplyResult(applied=2, rejected=[(1, Rejection("conflict", None, "x"))], outcomes=[A, C, A])
    ops.record_apply(result, events, now=1000.0, sent_at=[999.5, 999.0, 998.0])
    get = reg.get_sample_value
    assert get("kpi_events_processed_total", {"type": "lead.created"}) == 1
    assert get("kpi_events_processed_total", {"type": "customer.churned"}) == 1
    assert get("kpi_events_rejected_total", {"reason": "conflict"}) == 1
    assert get("kpi_last_event_timestamp_seconds") == 1000.0
    assert get("kpi_event_to_state_seconds_count") == 2
    assert get("kpi_event_to_state_seconds_sum") == 2.5
    assert get("kpi_event_to_state_seconds_bucket", {"le": "0.5"}) == 1
    assert get("kpi_event_to_state_seconds_bucket", {"le": "2.5"}) == 2


def test_record_apply_counts_exactly_what_was_applied() -> None:
    reg = CollectorRegistry()
    ops = OpMetrics(reg)
    events = [SourcedEvent(lead(i), "p0", i) for i in range(4)] + [SourcedEvent(churn(1), "p0", 9)]
    result = ApplyResult(applied=2, duplicates=1, redelivered=2, outcomes=[R, R, D, A, A])
    ops.record_apply(result, events, now=100.0, sent_at=[10.0, 20.0, 30.0, 99.0, 99.5])
    get = reg.get_sample_value
    assert get("kpi_events_processed_total", {"type": "lead.created"}) == 1
    assert get("kpi_events_processed_total", {"type": "customer.churned"}) == 1
    assert get("kpi_events_duplicate_total") == 1
    assert get("kpi_events_redelivered_total") == 2
    # Latency is observed for applied events only.
    assert get("kpi_event_to_state_seconds_count") == 2
    assert get("kpi_event_to_state_seconds_sum") == 1.5


def test_nothing_applied_leaves_the_timestamp_alone() -> None:
    reg = CollectorRegistry()
    ops = OpMetrics(reg)
    ops.record_apply(ApplyResult(duplicates=1, outcomes=[D]), [lead(1)], now=5.0, sent_at=[1.0])
    assert reg.get_sample_value("kpi_last_event_timestamp_seconds") == 0
    assert reg.get_sample_value("kpi_event_to_state_seconds_count") == 0


def test_rejections_lag_and_readiness() -> None:
    reg = CollectorRegistry()
    ops = OpMetrics(reg)
    ops.record_rejection(Rejection("invalid_json", None, "x"))
    ops.record_rejection("missing_field", 3)
    ops.record_rejections([Rejection("invalid_json", None, "y"), Rejection("unknown_type", "type", "z")])
    get = reg.get_sample_value
    assert get("kpi_events_rejected_total", {"reason": "invalid_json"}) == 2
    assert get("kpi_events_rejected_total", {"reason": "missing_field"}) == 3
    assert get("kpi_events_rejected_total", {"reason": "unknown_type"}) == 1
    ops.set_consumer_lag({("crm-events", 0): 5, ("crm-events", 1): 0})
    assert get("kpi_consumer_lag", {"topic": "crm-events", "partition": "0"}) == 5
    ops.set_consumer_lag({("crm-events", 1): 7})
    assert get("kpi_consumer_lag", {"topic": "crm-events", "partition": "0"}) is None
    assert get("kpi_consumer_lag", {"topic": "crm-events", "partition": "1"}) == 7
    ops.set_ready(True)
    assert get("kpi_worker_ready") == 1
    ops.set_ready(False)
    assert get("kpi_worker_ready") == 0


def test_record_apply_counts_folded_dimension_values() -> None:
    reg = CollectorRegistry()
    ops = OpMetrics(reg)
    get = reg.get_sample_value
    for dim in DIMENSIONS:
        assert get("kpi_dimension_values_folded_total", {"dimension": dim}) == 0
    result = ApplyResult(applied=2, outcomes=[A, A], folded={"rep": 1, "source": 2})
    ops.record_apply(result, [lead(1), lead(2)], now=10.0)
    assert get("kpi_dimension_values_folded_total", {"dimension": "rep"}) == 1
    assert get("kpi_dimension_values_folded_total", {"dimension": "source"}) == 2
    assert get("kpi_dimension_values_folded_total", {"dimension": "segment"}) == 0
