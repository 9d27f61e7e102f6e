"""KPI formulas at their edges (DESIGN section 4); pure, no server."""

from __future__ import annotations

import pytest

from kpi_state import kpis
from kpi_state.kpis import Current

STAGES = ("prospecting", "proposal")
M = kpis.MICROS


def test_ratios_are_null_on_zero_denominators() -> None:
    out = kpis.total_kpis({}, STAGES, Current(active_customers=0, open_deals=0))
    for name in (
        "qualification_rate",
        "conversion_rate",
        "win_rate",
        "avg_deal_size",
        "sales_cycle_days",
        "cac",
        "gross_margin",
        "churn_rate",
        "arpa",
        "ltv",
        "ltv_cac_ratio",
        "nps",
        "csat",
        "sales_velocity",
    ):
        assert out[name] is None, name
    assert out["stage_conversion_rate"] == {"prospecting": None, "proposal": None}
    assert out["leads"] == 0 and out["revenue_won"] == 0.0


def test_funnel_and_money() -> None:
    c = {
        "ld": 8,
        "ql": 4,
        "lc": 2,
        "cc": 1,
        "dw": 3,
        "dl": 1,
        "rw": 3000 * M,
        "cs": 3 * 86_400_000 * 2,
        "cn": 2,
        "nc": 2,
        "sp": 500 * M,
        "sm": 400 * M,
        "ss": 100 * M,
        "e:prospecting": 4,
        "e:proposal": 2,
        "e:won": 1,
    }
    out = kpis.total_kpis(c, STAGES, Current(active_customers=10, open_deals=5))
    assert out["qualification_rate"] == 0.5
    assert out["conversion_rate"] == 0.25
    assert out["cohort_conversion_rate"] == 0.125
    assert out["win_rate"] == 0.75
    assert out["avg_deal_size"] == 1000.0
    assert out["sales_cycle_days"] == 3.0
    assert out["cac"] == 250.0
    assert out["stage_entries"] == {"prospecting": 4, "proposal": 2, "won": 1}
    assert out["stage_conversion_rate"] == {"prospecting": 0.5, "proposal": 0.5}
    # velocity: open deals x win rate x avg deal size / cycle days
    assert out["sales_velocity"] == pytest.approx(5 * 0.75 * 1000.0 / 3.0)


def test_customer_economics() -> None:
    c = {
        "rr": 2000 * M,
        "gm": 1500 * M,
        "ch": 2,
        "nc": 2,
        "sp": 400 * M,
        "nn": 10,
        "np": 5,
        "nd": 2,
        "qn": 4,
        "qp": 3,
    }
    out = kpis.total_kpis(c, STAGES, Current(active_customers=20, open_deals=0))
    assert out["gross_margin"] == 0.75
    assert out["churn_rate"] == 2 / (20 - 2 + 2)
    assert out["arpa"] == 100.0
    assert out["ltv"] == pytest.approx(100.0 * 0.75 / 0.1)
    assert out["ltv_cac_ratio"] == pytest.approx(750.0 / 200.0)
    assert out["nps"] == 30.0
    assert out["csat"] == 0.75


def test_no_churn_means_no_ltv_and_zero_cac_means_no_ratio() -> None:
    out = kpis.total_kpis({"rr": 100 * M, "gm": 50 * M, "nc": 1}, STAGES, Current(5, 0))
    assert out["churn_rate"] == 0.0
    assert out["ltv"] is None  # churn rate 0 is a zero denominator
    out = kpis.total_kpis({"rr": 100 * M, "gm": 50 * M, "ch": 1, "nc": 1}, STAGES, Current(5, 0))
    assert out["cac"] == 0.0 and out["ltv"] is not None
    assert out["ltv_cac_ratio"] is None  # CAC of 0 is a zero denominator


def test_negative_cycle_is_kept() -> None:
    out = kpis.funnel_kpis({"cs": -86_400_000, "cn": 1})
    assert out["sales_cycle_days"] == -1.0


def test_dimension_presence_and_kpi_sets() -> None:
    assert kpis.has_contribution({"dl": 1}, "rep")
    assert kpis.has_contribution({"e:won": 1}, "rep")
    assert not kpis.has_contribution({"e:won": 1}, "source")
    assert kpis.has_contribution({"sp": 5}, "source")
    assert not kpis.has_contribution({"ld": 0}, "segment")
    rep = kpis.dimension_kpis({}, "rep", STAGES)
    assert "stage_entries" in rep and "spend" not in rep
    source = kpis.dimension_kpis({}, "source", STAGES)
    assert "cac" in source and "stage_entries" not in source
    segment = kpis.dimension_kpis({}, "segment", STAGES)
    assert "cac" not in segment and "stage_entries" not in segment
