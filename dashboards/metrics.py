"""Every metric a dashboard query reads: the one list panels take names from.

Contract: a panel expression names a metric only as a ``Metric`` member (``sel`` or an
f-string), never as a literal. tests/unit/test_dashboards_code.py checks that every
metric name in a generated query is listed here, and that every member is exported by
``kpi_state.collector`` (``sales_*``) or ``kpi_state.opmetrics`` (``kpi_*``), recorded by
a rule in prometheus/rules/, or is Prometheus' own (``up``). Renaming a family in the
collector therefore fails that test instead of blanking a wall screen.
"""

from __future__ import annotations

from enum import StrEnum


class Metric(StrEnum):
    # kpi_state.collector: KPI families (docs/metrics.md "KPI families").
    REVENUE_WON = "sales_revenue_won"
    NEW_CUSTOMERS = "sales_new_customers"
    CONVERSION_RATIO = "sales_conversion_ratio"
    WIN_RATIO = "sales_win_ratio"
    LTV_CAC_RATIO = "sales_ltv_cac_ratio"
    CAC = "sales_cac"
    AVG_DEAL_SIZE = "sales_avg_deal_size"
    CYCLE_SECONDS = "sales_cycle_seconds"
    NPS = "sales_nps"
    CSAT_RATIO = "sales_csat_ratio"
    LEADS = "sales_leads"
    QUALIFIED_LEADS = "sales_qualified_leads"
    DEALS_CREATED = "sales_deals_created"
    DEALS_WON = "sales_deals_won"
    REVENUE_WON_BY_REP = "sales_revenue_won_by_rep"
    NEW_CUSTOMERS_BY_REP = "sales_new_customers_by_rep"
    DEALS_WON_BY_REP = "sales_deals_won_by_rep"
    WIN_RATIO_BY_REP = "sales_win_ratio_by_rep"
    CAC_BY_SOURCE = "sales_cac_by_source"
    # kpi_state.collector: current state and targets.
    ACTIVE_CUSTOMERS = "sales_active_customers"
    PIPELINE_VALUE = "sales_pipeline_value"
    PIPELINE_WEIGHTED_VALUE = "sales_pipeline_weighted_value"
    TARGET_ATTAINMENT_RATIO = "sales_target_attainment_ratio"
    # prometheus/rules: the pace of each target, copies collapsed.
    TARGET_PACE_RATIO_MAX = "target:sales_target_pace_ratio:max"
    # kpi_state.opmetrics: one process's operational metrics.
    EVENTS_PROCESSED_TOTAL = "kpi_events_processed_total"
    EVENTS_REJECTED_TOTAL = "kpi_events_rejected_total"
    EVENTS_DUPLICATE_TOTAL = "kpi_events_duplicate_total"
    EVENTS_REDELIVERED_TOTAL = "kpi_events_redelivered_total"
    CONSUMER_LAG = "kpi_consumer_lag"
    EVENT_TO_STATE_SECONDS_BUCKET = "kpi_event_to_state_seconds_bucket"
    LAST_EVENT_TIMESTAMP_SECONDS = "kpi_last_event_timestamp_seconds"
    WORKER_READY = "kpi_worker_ready"
    # Prometheus' own scrape health.
    UP = "up"


# Metrics Prometheus itself writes for every scrape target; no project code exports them.
PROMETHEUS_OWN = frozenset({Metric.UP})


def window(name: str) -> str:
    """The matcher of one ``window`` label value (a name, or a Grafana variable)."""
    return f'window="{name}"'


IN_WINDOW = window("$window")
IN_PERIOD = window("$period")


def sel(metric: Metric, *matchers: str) -> str:
    """An instant-vector selector: ``sel(Metric.LEADS, IN_WINDOW)`` -> ``sales_leads{window="$window"}``."""
    return f"{metric}{{{', '.join(matchers)}}}" if matchers else str(metric)
