"""/metrics against the JSON document on a real Redis (DESIGN section 5).

Every value of ``KpiReader.document(as_of)`` must appear as exactly one sample of
``render_metrics(..., as_of)`` (same namespace, same instant), null values as no
sample, and ``/metrics`` must hold no ``sales_*`` sample that the document lacks.
The expected names are spelled out here from DESIGN and docs/metrics.md, not taken
from the collector.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from kpi_state.collector import render_metrics
from kpi_state.events import Event, EventParser
from kpi_state.opmetrics import OpMetrics
from kpi_state.report import KpiReader
from kpi_state.settings import Settings
from tests.conftest import SettingsFactory, StoreOpener

pytestmark = pytest.mark.integration

SampleKey = tuple[str, frozenset[tuple[str, str]]]

MONEY = {"revenue_won", "avg_deal_size", "spend", "spend_marketing", "spend_sales", "cac",
         "revenue_recorded", "arpa", "ltv", "sales_velocity"}  # fmt: skip
NAMES = {"sales_cycle_days": "sales_cycle_seconds", "csat": "sales_csat_ratio",
         "gross_margin": "sales_gross_margin_ratio", "sales_velocity": "sales_velocity"}  # fmt: skip
DIMS = {"by_rep": "rep", "by_source": "source", "by_segment": "segment"}


def exported(kpi: str, dim: str | None) -> str:
    name = NAMES.get(kpi) or "sales_" + (kpi[:-5] + "_ratio" if kpi.endswith("_rate") else kpi)
    return name + (f"_by_{dim}" if dim else "")


def expected_samples(doc: dict[str, Any]) -> dict[SampleKey, float]:
    """The samples a document stands for: one per non-null number, maps under a ``stage`` label."""
    out: dict[SampleKey, float] = {}
    currency = doc["currency"]

    def put(name: str, labels: dict[str, str], value: float | None) -> None:
        if value is not None:
            key = (name, frozenset(labels.items()))
            assert key not in out, key
            out[key] = value

    for window, wdoc in doc["windows"].items():
        groups: list[tuple[str | None, str, dict[str, Any]]] = [(None, "", wdoc["total"])]
        groups += [(DIMS[key], value, kpis) for key in DIMS for value, kpis in wdoc[key].items()]
        for dim, dim_value, kpis in groups:
            base = {"window": window} | ({dim: dim_value} if dim else {})
            for kpi, value in kpis.items():
                labels = base | ({"currency": currency} if kpi in MONEY else {})
                scale = 86400 if kpi == "sales_cycle_days" else 1
                if isinstance(value, dict):
                    for stage, v in value.items():
                        put(exported(kpi, dim), labels | {"stage": stage}, None if v is None else v * scale)
                else:
                    put(exported(kpi, dim), labels, None if value is None else value * scale)
    cur = doc["current"]
    pipe = cur["pipeline"]
    put("sales_active_customers", {}, cur["active_customers"])
    put("sales_pipeline_open_deals_all_stages", {}, pipe["open_deals"])
    put("sales_pipeline_value_all_stages", {"currency": currency}, pipe["value"])
    put("sales_pipeline_weighted_value", {"currency": currency}, pipe["weighted_value"])
    for stage, row in pipe["by_stage"].items():
        put("sales_pipeline_open_deals", {"stage": stage}, row["open_deals"])
        put("sales_pipeline_value", {"stage": stage, "currency": currency}, row["value"])
    return out


def count_nulls(node: Any) -> int:
    if isinstance(node, dict):
        return sum(count_nulls(v) for v in node.values())
    return 1 if node is None else 0


def parsed_samples(text: str) -> dict[SampleKey, float]:
    out: dict[SampleKey, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, key
            out[key] = s.value
    return out


def raw_events(now: datetime) -> Iterator[dict[str, Any]]:
    """A small set touching every event type, dimension and window (1h ... beyond 90d)."""
    ages = [timedelta(minutes=5), timedelta(hours=3), timedelta(days=2), timedelta(days=20),
            timedelta(days=60), timedelta(days=200)]  # fmt: skip
    reps, sources, segments = ["alice", "bob", "carol"], ["web", "ads", "other"], ["smb", "ent"]
    n = 0

    def at(age: timedelta, extra: int = 0) -> str:
        return (now - age + timedelta(seconds=extra)).isoformat()

    for k, age in enumerate(ages):
        for j in range(4):
            n += 1
            rep, src, seg = reps[(k + j) % 3], sources[(k * j) % 3], segments[j % 2]
            lead, deal, cust = f"L{n}", f"D{n}", f"C{n % 5}"
            yield {"type": "lead.created", "event_id": f"lc{n}", "occurred_at": at(age), "lead_id": lead,
                   "rep_id": rep, "source": src, "segment": seg}  # fmt: skip
            if j % 2 == 0:
                yield {
                    "type": "lead.qualified",
                    "event_id": f"lq{n}",
                    "occurred_at": at(age, 1),
                    "lead_id": lead,
                }
            yield {"type": "deal.created", "event_id": f"dc{n}", "occurred_at": at(age, 2), "deal_id": deal,
                   "rep_id": rep, "amount": 1000.0 + 250 * j, "lead_id": lead}  # fmt: skip
            stage = ["qualification", "proposal", "negotiation", "proposal"][j]
            yield {"type": "deal.stage_changed", "event_id": f"ds{n}", "occurred_at": at(age, 3),
                   "deal_id": deal, "to_stage": stage}  # fmt: skip
            if j == 1:
                yield {"type": "deal.won", "event_id": f"dw{n}", "occurred_at": at(age, 50), "deal_id": deal,
                       "customer_id": cust, "rep_id": rep, "amount": 1500.5}  # fmt: skip
            if j == 2:
                yield {"type": "deal.lost", "event_id": f"dl{n}", "occurred_at": at(age, 60), "deal_id": deal,
                       "rep_id": rep}  # fmt: skip
        yield {"type": "spend.recorded", "event_id": f"sp{k}", "occurred_at": at(age, 5), "amount": 300.25,
               "category": ["marketing", "sales"][k % 2], "source": sources[k % 3]}  # fmt: skip
        yield {"type": "revenue.recorded", "event_id": f"rr{k}", "occurred_at": at(age, 6),
               "customer_id": f"C{k % 5}", "amount": 99.0, "gross_margin": 0.7}  # fmt: skip
        yield {"type": "survey.answered", "event_id": f"sn{k}", "occurred_at": at(age, 7), "kind": "nps",
               "score": [10, 3, 8, 9, 0, 7][k]}  # fmt: skip
        yield {"type": "survey.answered", "event_id": f"sc{k}", "occurred_at": at(age, 8), "kind": "csat",
               "score": [5, 2, 4, 1, 3, 5][k]}  # fmt: skip
    yield {
        "type": "customer.churned",
        "event_id": "ch1",
        "occurred_at": at(timedelta(days=1)),
        "customer_id": "C2",
    }


def parse_all(settings: Settings, now: datetime) -> list[Event]:
    parser = EventParser(settings)
    out: list[Event] = []
    for raw in raw_events(now):
        event = parser.parse_object(raw, now)
        assert isinstance(event, Event.__args__), (raw, event)  # type: ignore[attr-defined]
        out.append(event)  # type: ignore[arg-type]
    return out


async def scrape_and_document(
    settings: Settings, open_store: StoreOpener, as_of: datetime
) -> tuple[dict[SampleKey, float], dict[str, Any], str]:
    async with open_store(settings) as store:
        result = await store.apply(parse_all(settings, as_of))
        assert result.rejected == [] and result.applied > 50
        reader = KpiReader(store, settings)
        body, content_type = await render_metrics(reader, settings, as_of=as_of)
        doc = await reader.document(as_of)
    assert content_type.startswith("text/plain")
    text = body.decode()
    return parsed_samples(text), doc, text


def test_every_document_value_is_one_sample(make_settings: SettingsFactory, open_store: StoreOpener) -> None:
    settings = make_settings()
    as_of = datetime.now(UTC).replace(microsecond=0)
    actual, doc, text = asyncio.run(scrape_and_document(settings, open_store, as_of))
    expected = expected_samples(doc)
    # The set is rich enough to mean something: dimensions and nulls in several windows.
    assert len(expected) > 1000
    assert {"alice", "bob", "carol"} <= set(doc["windows"]["1h"]["by_rep"])
    assert count_nulls(doc) >= 20
    sales = {k: v for k, v in actual.items() if k[0].startswith("sales_")}
    assert set(sales) == set(expected), set(sales) ^ set(expected)
    wrong = {k: (sales[k], v) for k, v in expected.items() if sales[k] != v}
    assert wrong == {}
    # No NaN or Inf stands in for a null.
    assert "NaN" not in text and "Inf" not in text


def test_capped_labels_fold_the_documents_values(
    make_settings: SettingsFactory, open_store: StoreOpener
) -> None:
    """With a cap of 2, each dimension shows one named value and "other", whose counts
    are the sums of the folded values' counts in the (uncapped) document."""
    settings = make_settings(label_cap=2)
    as_of = datetime.now(UTC).replace(microsecond=0)
    actual, doc, _ = asyncio.run(scrape_and_document(settings, open_store, as_of))
    for key, dim in DIMS.items():
        for window, wdoc in doc["windows"].items():
            shown = {dict(lb)[dim] for name, lb in actual if name == f"sales_leads_by_{dim}"
                     and dict(lb)["window"] == window}  # fmt: skip
            assert len(shown) <= 2, (dim, window, shown)
            folded = [v for name, v in wdoc[key].items() if name not in shown or name == "other"]
            for kpi in ("leads", "deals_won", "deals_created"):
                total = sum(v[kpi] for v in folded)
                sample = actual.get(
                    (f"sales_{kpi}_by_{dim}", frozenset({"window": window, dim: "other"}.items()))
                )
                assert sample == (total if folded else None), (dim, window, kpi)
            # Totals ignore the cap.
            assert actual[("sales_leads", frozenset({"window": window}.items()))] == wdoc["total"]["leads"]


PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


def test_content_negotiation_and_included_registries(
    make_settings: SettingsFactory, open_store: StoreOpener
) -> None:
    """Prometheus's Accept header gets the text format; an OpenMetrics-only client gets
    OpenMetrics with the same samples; included registries ride along in both."""
    settings = make_settings()
    as_of = datetime.now(UTC).replace(microsecond=0)
    ops_registry = CollectorRegistry()
    OpMetrics(ops_registry).record_rejection("invalid_json", 2)
    om_only = "application/openmetrics-text; version=1.0.0"

    async def scrape() -> tuple[tuple[bytes, str], tuple[bytes, str]]:
        async with open_store(settings) as store:
            await store.apply(parse_all(settings, as_of))
            reader = KpiReader(store, settings)
            text = await render_metrics(
                reader, settings, [ops_registry], accept=PROMETHEUS_ACCEPT, as_of=as_of
            )
            om = await render_metrics(reader, settings, [ops_registry], accept=om_only, as_of=as_of)
        return text, om

    (text_body, text_type), (om_body, om_type) = asyncio.run(scrape())
    assert text_type == "text/plain; version=0.0.4; charset=utf-8"
    assert om_type.startswith("application/openmetrics-text; version=1.0.0")
    text_samples = parsed_samples(text_body.decode())
    om_samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in parse_openmetrics(om_body.decode())
        for s in family.samples
    }
    rejected = ("kpi_events_rejected_total", frozenset({("reason", "invalid_json")}))
    assert text_samples[rejected] == om_samples[rejected] == 2
    sales = {k: v for k, v in text_samples.items() if k[0].startswith("sales_")}
    assert sales and sales == {k: v for k, v in om_samples.items() if k[0].startswith("sales_")}


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool (Debian's prometheus package) not installed"
)
def test_promtool_accepts_the_exposition(make_settings: SettingsFactory, open_store: StoreOpener) -> None:
    settings = make_settings()
    _, _, text = asyncio.run(scrape_and_document(settings, open_store, datetime.now(UTC)))
    ops_registry = CollectorRegistry()
    OpMetrics(ops_registry).record_rejection("invalid_json")
    text += generate_latest(ops_registry).decode()
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
