"""Operational metrics of one process (``kpi_*``, docs/metrics.md "Operational").

Contract: every metric lives on the registry passed in (never the global one), and
counts what *this* process did; Prometheus sums over instances. The worker and HTTP
ingest report through ``OpMetrics`` and nothing else touches the metrics.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from kpi_state import events as ev
from kpi_state.events import Rejection
from kpi_state.store import FOLDED_DIMENSIONS, ApplyResult, Outcome, SourcedEvent

# Freshness target is p99 < 1 s (DESIGN section 6): fine resolution up to a few
# seconds, coarse beyond, up to 30 s.
EVENT_TO_STATE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)


def _event_type(item: ev.Event | SourcedEvent) -> str:
    return item.event.type if isinstance(item, SourcedEvent) else item.type


class OpMetrics:
    """The ``kpi_*`` metrics of one process, on an injected registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.processed = Counter(
            "kpi_events_processed",
            "Valid events applied to KPI state by this process, by event type (duplicates not included)",
            ["type"],
            registry=registry,
        )
        self.rejected = Counter(
            "kpi_events_rejected",
            "Events refused (dead-lettered, or answered 4xx at HTTP ingest) by this process, by reason",
            ["reason"],
            registry=registry,
        )
        self.duplicate = Counter(
            "kpi_events_duplicate",
            "Events ignored because their event_id was already applied",
            registry=registry,
        )
        self.redelivered = Counter(
            "kpi_events_redelivered",
            "Events from Kafka skipped because their offset was already applied (redelivery after a restart)",
            registry=registry,
        )
        self.folded = Counter(
            "kpi_dimension_values_folded",
            "Applied events whose rep, source or segment was counted as 'other' because the"
            " dimension already holds KPI_DIMENSION_CAP distinct values, by dimension",
            ["dimension"],
            registry=registry,
        )
        self.event_to_state = Histogram(
            "kpi_event_to_state_seconds",
            "Seconds from the Kafka message timestamp to the Redis apply that made the event visible",
            buckets=EVENT_TO_STATE_BUCKETS,
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "kpi_consumer_lag",
            "Messages between the consumer position and the high watermark, per assigned partition",
            ["topic", "partition"],
            registry=registry,
        )
        self.last_event = Gauge(
            "kpi_last_event_timestamp_seconds",
            "Unix time (processing clock) of the latest apply to KPI state by this process",
            registry=registry,
        )
        self.ready = Gauge(
            "kpi_worker_ready",
            "1 while this worker is connected and consuming, else 0",
            registry=registry,
        )
        # Every type has a series from the start, so rate() and absent-alerts see zeros.
        for kind in ev.EVENT_TYPES:
            self.processed.labels(kind)
        for reason in ev.REJECTION_REASONS:
            self.rejected.labels(reason)
        for dim in FOLDED_DIMENSIONS:
            self.folded.labels(dim)

    def record_apply(
        self,
        result: ApplyResult,
        events: Sequence[ev.Event | SourcedEvent],
        now: float,
        sent_at: Sequence[float] | None = None,
    ) -> None:
        """Account for one ``KpiStore.apply(events)`` that returned ``result``.

        ``now``: processing clock (epoch s) right after the apply. ``sent_at``: the
        Kafka message timestamp (epoch s) of each event, aligned with ``events``; without
        it no event-to-state latency is observed.
        The rejections in ``result`` (conflicts, amounts out of range) are counted
        here; validation rejections go through ``record_rejection``.
        """
        for _, rejection in result.rejected:
            self.rejected.labels(rejection.reason).inc()
        applied = Tally(_event_type(events[i]) for i, o in enumerate(result.outcomes) if o is Outcome.APPLIED)
        for kind, n in applied.items():
            self.processed.labels(kind).inc(n)
        for dim, n in result.folded.items():
            self.folded.labels(dim).inc(n)
        if result.duplicates:
            self.duplicate.inc(result.duplicates)
        if result.redelivered:
            self.redelivered.inc(result.redelivered)
        if result.applied:
            self.last_event.set(now)
        if sent_at is not None:
            for i, outcome in enumerate(result.outcomes):
                if outcome is Outcome.APPLIED:
                    self.event_to_state.observe(max(0.0, now - sent_at[i]))

    def record_rejection(self, rejection: Rejection | str, count: int = 1) -> None:
        """An input refused before it reached the store (validation, HTTP ingest)."""
        reason = rejection.reason if isinstance(rejection, Rejection) else rejection
        self.rejected.labels(reason).inc(count)

    def record_rejections(self, rejections: Iterable[Rejection]) -> None:
        for reason, n in Tally(r.reason for r in rejections).items():
            self.rejected.labels(reason).inc(n)

    def set_consumer_lag(self, lags: Mapping[tuple[str, int], int]) -> None:
        """Replace the lag series with ``{(topic, partition): lag}`` of the current assignment,
        so partitions revoked by a rebalance stop being reported."""
        self.consumer_lag.clear()
        for (topic, partition), lag in lags.items():
            self.consumer_lag.labels(topic, str(partition)).set(lag)

    def set_ready(self, ready: bool) -> None:
        self.ready.set(1 if ready else 0)
