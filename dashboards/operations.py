"""The Operations dashboard (uid ``kpi-operations``): health of the CRM event pipeline.

Throughput, dead letters, duplicates, consumer lag and freshness (DESIGN section 6:
p99 event-to-state under 1 s). Counters are per process (kpi_state.opmetrics), so rates
are summed over instances; ``or vector(0)`` shows 0, not "n/a", before the first event.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from dashboards.metrics import Metric, sel
from dashboards.panels import (
    AMBER,
    Look,
    Panel,
    Query,
    at,
    base_dashboard,
    dashboard_link,
    stat_panel,
    steps,
    time_series_panel,
)

UID = "kpi-operations"
FILE = "operations.json"
RATE = "[$__rate_interval]"


def _rate(metric: Metric, by: str | None = None) -> str:
    """Per-second rate of a counter, summed over the processes (and ``by`` labels)."""
    rate = f"rate({metric}{RATE})"
    return f"sum by ({by}) ({rate})" if by else f"sum({rate})"


def _latency_quantile(q: float) -> str:
    return f"histogram_quantile({q}, sum by (le) (rate({Metric.EVENT_TO_STATE_SECONDS_BUCKET}{RATE})))"


LAG_BY_PARTITION = f"max by (topic, partition) ({sel(Metric.CONSUMER_LAG)})"
# The scrape jobs of prometheus/prometheus.yml: kpi-serve and the workers.
KPI_JOBS = 'job=~"kpi|kpi-worker"'


def _stat_panels() -> list[Panel]:
    return [
        stat_panel(
            1,
            "Events applied /s",
            "Valid events applied to KPI state, all workers.",
            at(0, 0, 4, 4),
            Query(f"{_rate(Metric.EVENTS_PROCESSED_TOTAL)} or vector(0)", "events/s"),
            Look("short", 1),
        ),
        stat_panel(
            2,
            "Rejected /s",
            "Events sent to the dead-letter topic (or refused at HTTP ingest).",
            at(4, 0, 4, 4),
            Query(f"{_rate(Metric.EVENTS_REJECTED_TOTAL)} or vector(0)", "rejected/s"),
            Look("short", 2, steps("green", (0.01, AMBER), (0.1, "red"))),
        ),
        stat_panel(
            3,
            "Duplicates /s",
            "Redelivered or retried events ignored by event_id. Expected after rebalances and restarts.",
            at(8, 0, 4, 4),
            Query(f"{_rate(Metric.EVENTS_DUPLICATE_TOTAL)} or vector(0)", "duplicates/s"),
            Look("short", 2),
        ),
        stat_panel(
            4,
            "Consumer lag",
            "Messages not yet consumed, all partitions.",
            at(12, 0, 4, 4),
            Query(f"sum({LAG_BY_PARTITION})", "messages"),
            Look("short", 0, steps("green", (1000, AMBER), (10000, "red"))),
        ),
        stat_panel(
            5,
            "Freshness p99",
            "99th percentile from Kafka message timestamp to the KPI state in Redis. Target: under 1 s.",
            at(16, 0, 4, 4),
            Query(_latency_quantile(0.99), "p99"),
            Look("s", 2, steps("green", (0.5, AMBER), (1, "red"))),
        ),
        stat_panel(
            6,
            "Since last apply",
            "Time since any worker last applied an event to the KPI state.",
            at(20, 0, 4, 4),
            Query(f"time() - max({sel(Metric.LAST_EVENT_TIMESTAMP_SECONDS)})", "age"),
            Look("s", 0, steps("green", (300, AMBER), (900, "red"))),
        ),
    ]


def _trend_panels() -> list[Panel]:
    return [
        time_series_panel(
            7,
            "Events applied /s by type",
            "kpi_events_processed_total by event type, all workers.",
            at(0, 4, 12, 9),
            [Query(_rate(Metric.EVENTS_PROCESSED_TOTAL, "type"), "{{type}}")],
            unit="short",
            fill_opacity=25,
            stacked=True,
        ),
        time_series_panel(
            8,
            "Rejected /s by reason",
            "Dead letters by validation reason. The KpiDeadLettersRising alert fires above "
            "0.1/s and 1% of traffic.",
            at(12, 4, 12, 9),
            [Query(_rate(Metric.EVENTS_REJECTED_TOTAL, "reason"), "{{reason}}")],
            unit="short",
            fill_opacity=25,
            stacked=True,
        ),
        time_series_panel(
            9,
            "Consumer lag by partition",
            "High watermark - consumer position per partition.",
            at(0, 13, 12, 9),
            [Query(LAG_BY_PARTITION, "{{topic}}/{{partition}}")],
            unit="short",
            fill_opacity=25,
            stacked=True,
        ),
        time_series_panel(
            10,
            "Event-to-state latency",
            "From the Kafka message timestamp to the Redis apply. Red: the 1 s p99 target.",
            at(12, 13, 12, 9),
            [Query(_latency_quantile(0.5), "p50"), Query(_latency_quantile(0.99), "p99")],
            unit="s",
            thresholds=steps("transparent", (1, "red")),
        ),
        time_series_panel(
            11,
            "Duplicates and redeliveries /s",
            "Events and messages seen again and ignored: idempotency at work. Bursts follow "
            "worker restarts and rebalances.",
            at(0, 22, 8, 8),
            [
                Query(_rate(Metric.EVENTS_DUPLICATE_TOTAL), "duplicate event_id"),
                Query(_rate(Metric.EVENTS_REDELIVERED_TOTAL), "redelivered offset"),
            ],
            unit="short",
        ),
        time_series_panel(
            12,
            "Events applied /s by instance",
            "How the partitions spread the work over the workers.",
            at(8, 22, 8, 8),
            [Query(_rate(Metric.EVENTS_PROCESSED_TOTAL, "instance"), "{{instance}}")],
            unit="short",
        ),
    ]


def _health_panels() -> list[Panel]:
    up_down = dm.ValueMap(
        {
            "0": dm.ValueMappingResult(text="DOWN", color="red", index=0),
            "1": dm.ValueMappingResult(text="UP", color="green", index=1),
        }
    )
    return [
        stat_panel(
            13,
            "Workers consuming",
            "Workers connected to Kafka and consuming (kpi_worker_ready).",
            at(16, 22, 3, 8),
            Query(f"sum({sel(Metric.WORKER_READY)}) or vector(0)", "workers"),
            Look("none", 0, steps("red", (1, "green"))),
        ),
        stat_panel(
            14,
            "Scrape targets",
            "up per scraped kpi-serve and worker.",
            at(19, 22, 5, 8),
            Query(f"max by (job, instance) ({sel(Metric.UP, KPI_JOBS)})", "{{job}} {{instance}}"),
            Look("none", None, steps("red", (1, "green"))),
            text_mode=cm.BigValueTextMode.VALUE_AND_NAME,
            mappings=[up_down],
        ),
    ]


def build() -> dash.Dashboard:
    board = base_dashboard(
        UID,
        "Operations",
        "Health of the CRM event pipeline: throughput, dead letters, duplicates, consumer lag and freshness.",
        ["kpi", "operations"],
        time_from="6h",
    ).link(dashboard_link("Sales wall", "/d/sales-wall/sales-wall", "The KPIs", keep_time=False))
    for panel in [*_stat_panels(), *_trend_panels(), *_health_panels()]:
        board = board.with_panel(panel)
    return board
