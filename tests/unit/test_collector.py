"""The sales_* families from hand-made counters (DESIGN section 5); pure, no server."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from kpi_state import kpis
from kpi_state.collector import (
    KpiCollector,
    KpiSnapshot,
    collect_kpi_metrics,
    family_name,
    kpi_families,
    render_text,
    scrape_registry,
)
from kpi_state.label_cap import OTHER
from kpi_state.settings import Settings

M = kpis.MICROS
DAY_MS = kpis.MS_PER_DAY
WINDOWS = ("1h", "24h", "7d", "30d", "90d", "all")
AS_OF = datetime(2026, 3, 31, 23, 59, 59, tzinfo=UTC)


def settings(**overrides: Any) -> Settings:
    return Settings(stages="prospecting:0.1,proposal:0.5", **overrides)


def current(active: int = 4, by_stage: Mapping[str, tuple[int, float]] | None = None) -> dict[str, Any]:
    rows = by_stage or {"prospecting": (2, 1000.0), "proposal": (1, 500.0)}
    return {
        "active_customers": active,
        "pipeline": {
            "open_deals": sum(n for n, _ in rows.values()),
            "value": sum(v for _, v in rows.values()),
            "weighted_value": 350.0,
            "by_stage": {s: {"open_deals": n, "value": v} for s, (n, v) in rows.items()},
        },
    }


def snapshot(fields: Mapping[str, Mapping[str, int]], cur: dict[str, Any] | None = None) -> KpiSnapshot:
    windows = {w: dict(fields.get(w, {})) for w in WINDOWS}
    return KpiSnapshot(as_of=AS_OF, windows=windows, current=cur or current())


def registry(snap: KpiSnapshot, cfg: Settings | None = None) -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(KpiCollector(lambda: snap, cfg or settings()))
    return reg


def samples(reg: CollectorRegistry, name: str) -> list[dict[str, str]]:
    return [s.labels for m in reg.collect() for s in m.samples if s.name == name]


def label_values(reg: CollectorRegistry, name: str, label: str, window: str) -> set[str]:
    return {lb[label] for lb in samples(reg, name) if lb["window"] == window}


FUNNEL = {
    "ld": 10, "ql": 4, "lc": 2, "cc": 1, "dc": 6, "dw": 3, "dl": 1,
    "rw": 3000 * M, "nc": 2, "cs": 3 * 10 * DAY_MS, "cn": 3,
}  # fmt: skip


def test_family_names() -> None:
    assert family_name("leads") == "sales_leads"
    assert family_name("conversion_rate") == "sales_conversion_ratio"
    assert family_name("win_rate", "rep") == "sales_win_ratio_by_rep"
    assert family_name("churn_rate") == "sales_churn_ratio"
    assert family_name("stage_conversion_rate", "rep") == "sales_stage_conversion_ratio_by_rep"
    assert family_name("sales_cycle_days", "source") == "sales_cycle_seconds_by_source"
    assert family_name("csat") == "sales_csat_ratio"
    assert family_name("gross_margin") == "sales_gross_margin_ratio"
    assert family_name("ltv_cac_ratio") == "sales_ltv_cac_ratio"
    assert family_name("nps") == "sales_nps"
    assert family_name("sales_velocity") == "sales_velocity"
    assert family_name("revenue_won", "segment") == "sales_revenue_won_by_segment"


def test_totals_names_units_and_labels() -> None:
    c = {**FUNNEL, "sp": 400 * M, "sm": 300 * M, "ss": 100 * M, "e:prospecting": 5, "e:proposal": 2,
         "e:won": 1, "rr": 800 * M, "gm": 600 * M, "ch": 1, "qn": 4, "qp": 3}  # fmt: skip
    reg = registry(snapshot({"30d": c}))
    get = reg.get_sample_value
    w = {"window": "30d"}
    eur = {**w, "currency": "EUR"}
    assert get("sales_leads", w) == 10
    assert get("sales_conversion_ratio", w) == 0.2
    assert get("sales_win_ratio", w) == 0.75
    assert get("sales_revenue_won", eur) == 3000.0
    assert get("sales_avg_deal_size", eur) == 1000.0
    assert get("sales_cycle_seconds", w) == 10 * 86400
    assert get("sales_spend_marketing", eur) == 300.0
    assert get("sales_cac", eur) == 200.0
    assert get("sales_stage_entries", {**w, "stage": "won"}) == 1
    assert get("sales_stage_conversion_ratio", {**w, "stage": "prospecting"}) == 0.4
    assert get("sales_stage_conversion_ratio", {**w, "stage": "proposal"}) == 0.5
    assert get("sales_gross_margin_ratio", w) == 0.75
    assert get("sales_csat_ratio", w) == 0.75
    assert get("sales_arpa", eur) == 200.0
    # churn = 1 / (4 active - 2 new + 1 churned); ltv = arpa x margin / churn
    assert get("sales_churn_ratio", w) == pytest.approx(1 / 3)
    assert get("sales_ltv", eur) == pytest.approx(200.0 * 0.75 * 3)
    assert get("sales_ltv_cac_ratio", w) == pytest.approx(450.0 / 200.0)
    # velocity = open deals 3 x win 0.75 x avg 1000 / 10 days, money per day
    assert get("sales_velocity", eur) == pytest.approx(225.0)
    # Money without its currency label is not a sample.
    assert get("sales_revenue_won", w) is None


def test_null_ratios_have_no_sample() -> None:
    reg = registry(snapshot({"30d": {"ld": 5}}))
    for family in ("sales_win_ratio", "sales_csat_ratio", "sales_nps", "sales_cycle_seconds",
                   "sales_avg_deal_size", "sales_cac", "sales_ltv", "sales_velocity",
                   "sales_gross_margin_ratio", "sales_stage_conversion_ratio"):  # fmt: skip
        assert samples(reg, family) == [], family
    assert reg.get_sample_value("sales_leads", {"window": "30d"}) == 5
    assert reg.get_sample_value("sales_conversion_ratio", {"window": "30d"}) == 0.0
    assert reg.get_sample_value("sales_conversion_ratio", {"window": "7d"}) is None
    text = generate_latest(reg).decode()
    assert "# TYPE sales_win_ratio gauge" in text  # the family is declared, just empty
    assert "NaN" not in text


def test_every_window_in_every_total_family() -> None:
    reg = registry(snapshot({}))
    for family in ("sales_leads", "sales_revenue_won", "sales_churned_customers", "sales_spend_sales"):
        assert sorted(lb["window"] for lb in samples(reg, family)) == sorted(WINDOWS)
    assert {lb["stage"] for lb in samples(reg, "sales_stage_entries")} == {"prospecting", "proposal", "won"}


def test_breakdowns_names_and_labels() -> None:
    c = {
        "ld|r|alice": 3, "dw|r|alice": 1, "rw|r|alice": 500 * M, "e:won|r|alice": 1,
        "e:prospecting|r|bob": 2,
        "ld|s|web": 3, "sp|s|web": 90 * M, "sp|s|ads": 40 * M, "nc|s|web": 3,
        "ld|g|smb": 3,
    }  # fmt: skip
    reg = registry(snapshot({"7d": c}))
    get = reg.get_sample_value
    assert get("sales_leads_by_rep", {"window": "7d", "rep": "alice"}) == 3
    assert get("sales_revenue_won_by_rep", {"window": "7d", "rep": "alice", "currency": "EUR"}) == 500.0
    assert get("sales_stage_entries_by_rep", {"window": "7d", "rep": "bob", "stage": "prospecting"}) == 2
    assert get("sales_stage_entries_by_rep", {"window": "7d", "rep": "bob", "stage": "won"}) == 0
    assert get("sales_cac_by_source", {"window": "7d", "source": "web", "currency": "EUR"}) == 30.0
    assert get("sales_spend_by_source", {"window": "7d", "source": "ads", "currency": "EUR"}) == 40.0
    assert samples(reg, "sales_cac_by_source") == [{"window": "7d", "source": "web", "currency": "EUR"}]
    assert get("sales_leads_by_segment", {"window": "7d", "segment": "smb"}) == 3
    # Dimensions carry only the KPIs marked for them.
    assert samples(reg, "sales_spend_by_rep") == []
    assert samples(reg, "sales_stage_entries_by_source") == []
    # A value with no contribution in a window has no series there.
    assert label_values(reg, "sales_leads_by_rep", "rep", "30d") == set()


def test_current_state() -> None:
    reg = registry(snapshot({}))
    get = reg.get_sample_value
    assert get("sales_active_customers") == 4
    assert get("sales_pipeline_open_deals", {"stage": "prospecting"}) == 2
    assert get("sales_pipeline_value", {"stage": "proposal", "currency": "EUR"}) == 500.0
    assert get("sales_pipeline_open_deals_all_stages") == 3
    assert get("sales_pipeline_value_all_stages", {"currency": "EUR"}) == 1500.0
    assert get("sales_pipeline_weighted_value", {"currency": "EUR"}) == 350.0


def rep_fields(
    rep: str, revenue: int, leads: int, conversions: int, won: int, cycle_days: int
) -> dict[str, int]:
    out = {"rw": revenue * M, "ld": leads, "lc": conversions, "dw": won, "cs": cycle_days * DAY_MS, "cn": won}
    return {f"{code}|r|{rep}": n for code, n in out.items() if n}


def capped_snapshot() -> KpiSnapshot:
    reps = {  # rep: (revenue, leads, conversions, won, cycle days)
        "a": (900, 10, 1, 1, 10), "b": (800, 10, 2, 2, 20), "c": (300, 4, 1, 1, 4),
        "d": (200, 6, 3, 1, 6), "e": (0, 5, 0, 0, 0),
    }  # fmt: skip
    lifetime: dict[str, int] = {}
    for rep, row in reps.items():
        lifetime.update(rep_fields(rep, *row))
    recent = {**rep_fields("c", 300, 4, 1, 1, 4), **rep_fields("d", 200, 6, 3, 1, 6),
              **rep_fields("e", 0, 5, 0, 0, 0), **rep_fields("a", 100, 1, 0, 1, 2)}  # fmt: skip
    return snapshot({"all": lifetime, "30d": recent})


def test_fold_sums_counters_and_recomputes_ratios() -> None:
    reg = registry(capped_snapshot(), settings(label_cap=3))
    get = reg.get_sample_value
    # The two largest by lifetime revenue keep their names; c, d, e become "other".
    for window in ("all", "30d"):
        assert label_values(reg, "sales_leads_by_rep", "rep", window) <= {"a", "b", OTHER}
    assert label_values(reg, "sales_leads_by_rep", "rep", "30d") == {"a", OTHER}
    other = {"window": "30d", "rep": OTHER}
    assert get("sales_leads_by_rep", other) == 15
    assert get("sales_lead_conversions_by_rep", other) == 4
    assert get("sales_conversion_ratio_by_rep", other) == 4 / 15  # not the mean of 1/4, 3/6, 0/5
    assert get("sales_revenue_won_by_rep", {**other, "currency": "EUR"}) == 500.0
    assert get("sales_avg_deal_size_by_rep", {**other, "currency": "EUR"}) == 250.0
    assert get("sales_cycle_seconds_by_rep", other) == 5 * 86400
    assert get("sales_leads_by_rep", {"window": "30d", "rep": "a"}) == 1
    # Totals are not affected by the cap.
    assert get("sales_leads", {"window": "30d"}) is not None


def test_fold_keeps_one_label_set_per_window_across_families() -> None:
    reg = registry(capped_snapshot(), settings(label_cap=3))
    # Counts and sums are never null, so each has a sample for every listed value.
    never_null = ("leads", "qualified_leads", "lead_conversions", "cohort_conversions", "deals_created",
                  "deals_won", "deals_lost", "revenue_won", "new_customers", "stage_entries")  # fmt: skip
    for window in ("all", "30d"):
        sets = {
            frozenset(lb["rep"] for lb in samples(reg, family_name(kpi, "rep")) if lb["window"] == window)
            for kpi in never_null
        }
        assert len(sets) == 1, (window, sets)


def test_no_fold_at_the_cap_and_everything_folds_at_cap_one() -> None:
    snap = capped_snapshot()
    reg = registry(snap, settings(label_cap=5))
    assert label_values(reg, "sales_leads_by_rep", "rep", "all") == {"a", "b", "c", "d", "e"}
    reg = registry(snap, settings(label_cap=1))
    assert label_values(reg, "sales_leads_by_rep", "rep", "all") == {OTHER}
    assert reg.get_sample_value("sales_leads_by_rep", {"window": "all", "rep": OTHER}) == 35


def test_a_real_other_value_is_merged_into_the_fold() -> None:
    fields = {"all": {"ld|s|web": 9, "ld|s|other": 1, "ld|s|ads": 2, "ld|s|mail": 3}}
    reg = registry(snapshot(fields), settings(label_cap=2))
    assert label_values(reg, "sales_leads_by_source", "source", "all") == {"web", OTHER}
    assert reg.get_sample_value("sales_leads_by_source", {"window": "all", "source": OTHER}) == 6
    reg = registry(snapshot(fields), settings(label_cap=4))
    assert reg.get_sample_value("sales_leads_by_source", {"window": "all", "source": OTHER}) == 1


def test_currency_comes_from_settings() -> None:
    reg = registry(snapshot({"all": {"rw": 5 * M, "dw": 1}}), settings(currency="USD"))
    assert reg.get_sample_value("sales_revenue_won", {"window": "all", "currency": "USD"}) == 5.0


def test_exposition_has_each_family_once_and_parses() -> None:
    snap = capped_snapshot()
    reg = scrape_registry(snap, settings(label_cap=3))
    text = generate_latest(reg).decode()
    parsed = list(text_string_to_metric_families(text))
    assert len({m.name for m in parsed}) == len(parsed)
    assert len(parsed) == len(collect_kpi_metrics(snap, settings(label_cap=3)))
    assert generate_openmetrics(reg).decode().endswith("# EOF\n")


def test_collector_reads_the_snapshot_only_when_collected() -> None:
    calls: list[int] = []

    def snap() -> KpiSnapshot:
        calls.append(1)
        return snapshot({})

    reg = CollectorRegistry(auto_describe=True)
    reg.register(KpiCollector(snap, settings()))
    assert calls == []
    generate_latest(reg)
    assert calls == [1]


def test_include_merges_other_registries() -> None:
    ops = CollectorRegistry()
    Counter("kpi_test_things", "things", registry=ops).inc(2)
    reg = scrape_registry(snapshot({}), settings(), include=[ops])
    assert reg.get_sample_value("kpi_test_things_total") == 2
    assert reg.get_sample_value("sales_leads", {"window": "all"}) == 0


def test_render_text_is_byte_identical_to_generate_latest() -> None:
    odd = ['a"b', "back\\slash", "new\nline", "100%s", "Zoë", "x" * 64]
    fields: dict[str, int] = {}
    for i, rep in enumerate(odd):
        fields |= {f"ld|r|{rep}": i + 1, f"dw|r|{rep}": 1, f"rw|r|{rep}": (123_456_789 + i) * M}
    fields |= {"cs": -5 * DAY_MS, "cn": 3, "ld": 7, "ql": 1, "sp": 1 * M, "nc": 3, "nn": 3, "nd": 2}
    snap = snapshot({"all": fields, "1h": {"ld": 1, "rw": 999_999_990_000, "dw": 1}})
    cfg = settings(label_cap=4)
    text = render_text(kpi_families(snap, cfg))
    assert text == generate_latest(registry(snap, cfg)).decode()
    assert 'rep="a\\"b"' in render_text(kpi_families(snap, settings()))
    assert "e+08" in text  # Go-style exponent for large values
    assert 'sales_cycle_seconds{window="all"} -144000.0' in text
