"""The ``sales_*`` gauges of ``/metrics`` (DESIGN section 5), built at scrape time.

Contract:

- Values come from the same window counters and the same ``kpi_state.kpis``
  functions as ``KpiReader.document``, so for one namespace and one ``as_of`` every
  sample equals the matching value of ``kpi show --format json`` (when no label cap
  applies). A KPI whose value is null has no sample.
- Names: ``<kpi>`` -> ``sales_<kpi>{window}``, breakdowns
  ``sales_<kpi>_by_<rep|source|segment>{window,<dim>}``; ``*_rate`` -> ``*_ratio``;
  ``sales_cycle_days`` -> ``sales_cycle_seconds`` (x 86400); ``csat`` and
  ``gross_margin`` get ``_ratio``; maps (``stage_entries``, ``stage_conversion_rate``)
  get a ``stage`` label; money gets a ``currency`` label.
- Label cap: per dimension, when the snapshot holds more than ``settings.label_cap``
  distinct values (over all windows), the ``label_cap - 1`` most important keep
  their name and the rest, in every window, are folded into ``"other"``, so at most
  ``label_cap`` values are exported. Importance is the value's lifetime (``all``
  window) contribution: money first (revenue won + spend, in micro-units), then
  activity (leads + deals created/won/lost + stage entries), then name. Folding sums
  the counters and recomputes every ratio from the sums. A real value named
  ``"other"`` is always folded when a cap applies. Each value is named or folded
  the same way in every window, and within a window every family of a dimension
  carries the same label values. The store caps each dimension at write time first
  (``settings.dimension_cap``, larger; lua/apply.lua), so this read-time cap works on at
  most ``dimension_cap + 3`` values and a scrape's cost is bounded whatever the input. The
  ranking and folding are ``kpi_state.label_cap`` (pure).
- The Redis client is asyncio and collectors are synchronous: the scrape path
  awaits ``read_snapshot`` and then encodes that snapshot (``render_metrics``; or
  ``scrape_registry`` for a registry around it), so concurrent scrapes share nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from kpi_state import kpis
from kpi_state.kpis import DIMENSIONS, Dim
from kpi_state.label_cap import fold, kept_values
from kpi_state.report import KpiReader, current_of, split_counters
from kpi_state.settings import Settings
from kpi_state.target_metrics import add_target_rows

SECONDS_PER_DAY = 86_400

MONEY_KPIS = frozenset(
    {
        "revenue_won",
        "avg_deal_size",
        "spend",
        "spend_marketing",
        "spend_sales",
        "cac",
        "revenue_recorded",
        "arpa",
        "ltv",
        "sales_velocity",
    }
)
_RENAMES = {
    "sales_cycle_days": "cycle_seconds",
    "csat": "csat_ratio",
    "gross_margin": "gross_margin_ratio",
    "sales_velocity": "velocity",
}
_SCALES = {"sales_cycle_days": float(SECONDS_PER_DAY)}  # x 1.0 elsewhere: a float, exact for our ints
_HELP = {
    "leads": "lead.created events",
    "qualified_leads": "Leads whose first lead.qualified falls in the window",
    "qualification_rate": "Qualified leads / leads",
    "lead_conversions": "Leads whose first won deal falls in the window",
    "conversion_rate": "Lead conversions / leads",
    "cohort_conversions": "Leads created in the window that have a won deal (any time)",
    "cohort_conversion_rate": "Cohort conversions / leads",
    "deals_created": "deal.created events",
    "deals_won": "deal.won events",
    "deals_lost": "deal.lost events",
    "win_rate": "Deals won / (deals won + deals lost)",
    "revenue_won": "Sum of deal.won amounts",
    "avg_deal_size": "Revenue won / deals won",
    "new_customers": "Customers whose first deal.won falls in the window",
    "sales_cycle_days": "Mean time from deal.created to deal.won of deals won in the window, in seconds",
    "spend": "Sum of spend.recorded amounts",
    "spend_marketing": "Spend with category marketing",
    "spend_sales": "Spend with category sales",
    "cac": "Customer acquisition cost: spend / new customers",
    "stage_entries": "Entries into each configured stage and won",
    "stage_conversion_rate": "Entries of the next stage / entries of the stage (won after the last)",
    "revenue_recorded": "Sum of revenue.recorded amounts",
    "gross_margin": "Sum of amount x gross margin / revenue recorded",
    "churned_customers": "customer.churned events",
    "churn_rate": "Churned customers / customers active at the window's start",
    "arpa": "Revenue recorded / active customers now",
    "ltv": "ARPA x gross margin / churn ratio",
    "ltv_cac_ratio": "LTV / CAC",
    "nps": "Net promoter score, -100..100",
    "csat": "CSAT responses scored 4-5 / CSAT responses",
    "sales_velocity": "Open deals x win ratio x average deal size / cycle days (money per day)",
}


def family_name(kpi: str, dim: Dim | None = None) -> str:
    """The exported family of a KPI name of the JSON document (and of one breakdown)."""
    base = _RENAMES.get(kpi)
    if base is None:
        base = kpi[: -len("_rate")] + "_ratio" if kpi.endswith("_rate") else kpi
    return f"sales_{base}" + (f"_by_{dim}" if dim is not None else "")


@dataclass(frozen=True)
class KpiSnapshot:
    """What one scrape exports: ``KpiReader.window_fields`` output, read once.

    ``windows`` maps a window name to its summed bucket fields; ``current`` is the
    document's ``current`` section (``KpiReader.current``).
    """

    as_of: datetime
    windows: Mapping[str, Mapping[str, int]]
    current: Mapping[str, Any]
    targets: Sequence[Mapping[str, Any]] = ()  # KpiReader.evaluate_targets


async def read_snapshot(reader: KpiReader, as_of: datetime | None = None) -> KpiSnapshot:
    """One pipelined read of every window and the current state."""
    when = as_of or datetime.now(UTC)
    targets = await reader.targets.load()
    windows, cur = await reader.window_fields(when)
    current = reader.current(cur)
    evaluated = reader.evaluate_targets_from_fields(targets, when, windows, current) if targets else []
    return KpiSnapshot(as_of=when, windows=windows, current=current, targets=evaluated)


@dataclass
class KpiFamily:
    """One gauge family. ``labels`` are sorted (the order the text exposition prints
    them in) and every row holds its label values in that order."""

    name: str
    doc: str
    labels: tuple[str, ...]
    rows: list[tuple[tuple[str, ...], float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if list(self.labels) != sorted(self.labels):
            raise ValueError(f"{self.name}: labels must be sorted, got {self.labels}")

    def metric(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily(self.name, self.doc, labels=self.labels)
        for values, value in self.rows:
            family.add_metric(values, value)
        return family


class _Builder:
    """Families keyed by exported name, created on first use, in first-use order."""

    def __init__(self, currency: str) -> None:
        self._currency = currency
        self._families: dict[str, KpiFamily] = {}
        self._kpi_families: dict[tuple[str, Dim | None], tuple[KpiFamily, bool, float]] = {}

    def family(self, name: str, doc: str, labels: Iterable[str]) -> KpiFamily:
        family = self._families.get(name)
        if family is None:
            family = KpiFamily(name, doc, tuple(sorted(labels)))
            self._families[name] = family
        return family

    def _kpi_family(self, kpi: str, dim: Dim | None, is_map: bool) -> tuple[KpiFamily, bool, float]:
        found = self._kpi_families.get((kpi, dim))
        if found is None:
            money = kpi in MONEY_KPIS
            labels = ["window"]
            if dim is not None:
                labels.append(dim)
            if is_map:
                labels.append("stage")
            if money:
                labels.append("currency")
            doc = _HELP.get(kpi, kpi) + ("" if dim is None else f", per {dim}")
            found = self.family(family_name(kpi, dim), doc, labels), money, _SCALES.get(kpi, 1.0)
            self._kpi_families[(kpi, dim)] = found
        return found

    def kpi_values(self, window: str, dim: Dim | None, dim_value: str, values: Mapping[str, Any]) -> None:
        """Rows of one KPI dict of the document (``kpis.total_kpis`` / ``dimension_kpis``),
        whose values are numbers, None, or {stage: number or None}."""
        # Sorted label order is (currency, <dim>, stage, window): build rows in that order.
        plain: tuple[str, ...] = () if dim is None else (dim_value,)
        priced = (self._currency, *plain)
        for kpi, value in values.items():
            if isinstance(value, dict):
                family, money, scale = self._kpi_family(kpi, dim, True)
                head = priced if money else plain
                for stage, v in value.items():
                    if v is not None:
                        family.rows.append(((*head, stage, window), v * scale))
            else:
                family, money, scale = self._kpi_family(kpi, dim, False)
                if value is not None:  # a null is no sample, but its family is still declared
                    family.rows.append(((*(priced if money else plain), window), value * scale))

    def current(self, current: Mapping[str, Any]) -> None:
        cur = self._currency
        pipeline = current["pipeline"]
        self.family(
            "sales_active_customers", "Customers with a won deal, minus those churned", ()
        ).rows.append(((), float(current["active_customers"])))
        open_deals = self.family("sales_pipeline_open_deals", "Open deals per current stage", ["stage"])
        value = self.family(
            "sales_pipeline_value", "Value of the open deals per current stage", ["stage", "currency"]
        )
        for stage, row in pipeline["by_stage"].items():
            open_deals.rows.append(((stage,), float(row["open_deals"])))
            value.rows.append(((cur, stage), float(row["value"])))
        # Whole-pipeline sums as single series. Not "_total": that suffix is for counters
        # (promtool check metrics rejects it on a gauge).
        self.family("sales_pipeline_open_deals_all_stages", "Open deals in every stage", ()).rows.append(
            ((), float(pipeline["open_deals"]))
        )
        self.family(
            "sales_pipeline_value_all_stages", "Value of the open deals in every stage", ["currency"]
        ).rows.append(((cur,), float(pipeline["value"])))
        self.family(
            "sales_pipeline_weighted_value", "Sum of open deal value x stage win probability", ["currency"]
        ).rows.append(((cur,), float(pipeline["weighted_value"])))

    def families(self) -> list[KpiFamily]:
        return list(self._families.values())


def kpi_families(snapshot: KpiSnapshot, settings: Settings) -> list[KpiFamily]:
    """Every ``sales_*`` family for one snapshot. Pure: no I/O."""
    stages = settings.stage_names
    current = current_of(snapshot.current)
    split = {name: split_counters(fields) for name, fields in snapshot.windows.items()}
    per_window = {name: dims for name, (_, dims) in split.items()}
    kept = {dim: kept_values(per_window, dim, settings.label_cap) for dim in DIMENSIONS}
    builder = _Builder(settings.currency)
    for window, (total, _) in split.items():
        builder.kpi_values(window, None, "", kpis.total_kpis(total, stages, current))
    for dim in DIMENSIONS:
        for window, (_, dims) in split.items():
            for value, counters in fold(dims[dim], dim, kept[dim]):
                builder.kpi_values(window, dim, value, kpis.dimension_kpis(counters, dim, stages))
    builder.current(snapshot.current)
    add_target_rows(builder.family, snapshot.targets, settings.currency)
    return builder.families()


def collect_kpi_metrics(snapshot: KpiSnapshot, settings: Settings) -> list[Metric]:
    """``kpi_families`` as prometheus_client metric families."""
    return [family.metric() for family in kpi_families(snapshot, settings)]


_go_float = cast(Callable[[float], str], floatToGoString)


class _Escaped(dict[str, str]):
    """Label value -> its escaped form in the text format, computed once per value."""

    def __missing__(self, value: str) -> str:
        escaped = self[value] = value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
        return escaped


def render_text(families: Iterable[KpiFamily]) -> str:
    """Text exposition format 0.0.4, byte-identical to ``generate_latest`` over
    ``family.metric()`` of the same families, without building the sample objects."""
    out: list[str] = []
    escaped = _Escaped()
    for family in families:
        doc = family.doc.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {family.name} {doc}\n# TYPE {family.name} gauge\n")
        if family.labels:
            pairs = ",".join(f'{label}="%s"' for label in family.labels)
            line = f"{family.name}{{{pairs}}} %s\n"
        else:
            line = f"{family.name} %s\n"
        for values, value in family.rows:
            # repr is Go's formatting below 1e6 (floatToGoString switches to exponents above).
            number = repr(value) if -1e6 < value < 1e6 else _go_float(value)
            out.append(line % (*map(escaped.__getitem__, values), number))
    return "".join(out)


class KpiCollector(Collector):
    """A collector over whatever ``snapshot()`` returns at ``collect()`` time.

    ``snapshot`` must not block on I/O (collect() runs synchronously inside the
    exposition); give it an already-read ``KpiSnapshot``.
    """

    def __init__(self, snapshot: Callable[[], KpiSnapshot], settings: Settings) -> None:
        self._snapshot = snapshot
        self._settings = settings

    def describe(self) -> Iterable[Metric]:
        # Declares no names, so a registry with auto_describe never calls snapshot() at register time.
        return ()

    def collect(self) -> Iterable[Metric]:
        return collect_kpi_metrics(self._snapshot(), self._settings)


def scrape_registry(
    snapshot: KpiSnapshot, settings: Settings, include: Iterable[Collector] = ()
) -> CollectorRegistry:
    """A registry for one scrape: the KPI families of ``snapshot`` plus ``include``
    (e.g. the process's operational-metrics registry), which must not export ``sales_*``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(KpiCollector(lambda: snapshot, settings))
    for collector in include:
        registry.register(collector)
    return registry


CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


def _text_acceptable(accept: str) -> bool:
    media = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    return not accept.strip() or bool(media & {"text/plain", "text/*", "*/*"})


async def render_metrics(
    reader: KpiReader,
    settings: Settings,
    include: Iterable[Collector] = (),
    accept: str = "",
    as_of: datetime | None = None,
) -> tuple[bytes, str]:
    """Body and content type of one ``/metrics`` response: Redis is read once, then the
    KPI families and ``include`` (which must not export ``sales_*``) are encoded.

    Text format 0.0.4 whenever ``accept`` (the request's Accept header) allows it, as
    Prometheus's always does: the KPI families then take the direct ``render_text``
    path, several times faster than sample objects and ``generate_latest``. Only a
    client that accepts nothing but OpenMetrics gets it, through a registry.
    """
    snapshot = await read_snapshot(reader, as_of)
    if _text_acceptable(accept):
        body = render_text(kpi_families(snapshot, settings)).encode()
        return body + b"".join(generate_latest(c) for c in include), CONTENT_TYPE
    encode, content_type = choose_encoder(accept)
    return encode(scrape_registry(snapshot, settings, include)), content_type
