"""Targets (DESIGN section 4): files refused whole with line and reason, periods, figures."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from kpi_state.targets import (
    Target,
    TargetsRefused,
    evaluate,
    parse_period,
    parse_targets_text,
    period_name,
    status_of,
)

GOOD_YAML = """\
# quotas for November
- kpi: revenue_won
  period: 2026-11
  scope: total
  value: 100000
- {kpi: leads, period: 2026-Q4, scope: "rep:alice", value: 30}
"""


def test_yaml_and_json_load() -> None:
    targets = parse_targets_text(GOOD_YAML)
    assert [t.key for t in targets] == [
        ("revenue_won", "2026-11", "total"),
        ("leads", "2026-Q4", "rep:alice"),
    ]
    as_json = '[{"kpi": "deals_won", "period": "2026", "scope": "segment:smb", "value": 12}]'
    assert parse_targets_text(as_json) == [
        Target(kpi="deals_won", period="2026", scope="segment:smb", value=12)
    ]


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("{kpi: churn, period: 2026-11, scope: total, value: 1}", "kpi: Input should be"),
        ("{kpi: leads, period: 2026-13, scope: total, value: 1}", "period: Value error, period must be"),
        ("{kpi: leads, period: 26-Q1, scope: total, value: 1}", "period: Value error"),
        ('{kpi: leads, period: 2026, scope: "team:x", value: 1}', "scope: Value error, scope must be"),
        ('{kpi: leads, period: 2026, scope: "rep:", value: 1}', "scope: Value error"),
        (
            "{kpi: leads, period: 2026, scope: total, value: -1}",
            "value: Input should be greater than or equal to 0",
        ),
        ("{kpi: leads, period: 2026, scope: total, value: .nan}", "value: Input should be a finite number"),
        ("{kpi: leads, period: 2026, scope: total}", "value: Field required"),
        (
            "{kpi: leads, period: 2026, scope: total, value: 1, team: x}",
            "team: Extra inputs are not permitted",
        ),
    ],
)
def test_one_bad_entry_refuses_the_file_with_its_line(entry: str, reason: str) -> None:
    text = GOOD_YAML + f"- {entry}\n"
    with pytest.raises(TargetsRefused) as refused:
        parse_targets_text(text)
    assert len(refused.value.problems) == 1
    line, why = refused.value.problems[0]
    assert line == 7 and why.startswith(reason), why


def test_every_bad_line_is_named_and_duplicates_are_refused() -> None:
    text = (
        '[{"kpi": "leads", "period": "2026", "value": 1},\n'
        ' {"kpi": "leads", "period": "2026", "value": 2},\n'
        ' {"kpi": "x", "period": "2026", "value": 2}]'
    )
    with pytest.raises(TargetsRefused) as refused:
        parse_targets_text(text)
    assert [line for line, _ in refused.value.problems] == [2, 3]
    assert "a second target for leads 2026 total" in refused.value.problems[0][1]


def test_not_a_list_or_not_yaml() -> None:
    with pytest.raises(TargetsRefused, match="line 1: expected a list"):
        parse_targets_text("kpi: leads\n")
    with pytest.raises(TargetsRefused, match="not YAML or JSON"):
        parse_targets_text("[{]")


def test_periods_are_named_by_their_start() -> None:
    assert parse_period("2026-11") == parse_period("2026-11", 2)
    assert parse_period("2026-11").start == date(2026, 11, 1) and parse_period("2026-11").end == date(
        2026, 12, 1
    )
    assert parse_period("2026-Q4").start == date(2026, 10, 1) and parse_period("2026-Q4").end == date(
        2027, 1, 1
    )
    # Fiscal year from February: 2026 is Feb 2026 - Jan 2027, its Q4 Nov 2026 - Jan 2027.
    assert (parse_period("2026", 2).start, parse_period("2026", 2).end) == (
        date(2026, 2, 1),
        date(2027, 2, 1),
    )
    assert (parse_period("2026-Q4", 2).start, parse_period("2026-Q4", 2).end) == (
        date(2026, 11, 1),
        date(2027, 2, 1),
    )


@pytest.mark.parametrize("fiscal", range(1, 13))
def test_period_names_round_trip(fiscal: int) -> None:
    day = date(2026, 1, 1)
    while day < date(2028, 1, 1):
        for kind in ("month", "quarter", "year"):
            period = parse_period(period_name(day, kind, fiscal), fiscal)  # type: ignore[arg-type]
            assert period.kind == kind and period.start <= day < period.end
        day = date.fromordinal(day.toordinal() + 1)
    assert period_name(date(2026, 1, 20), "quarter", 2) == "2025-Q4"
    assert period_name(date(2026, 1, 20), "year", 2) == "2025"


def window(total: dict[str, Any], by_rep: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"total": total, "by_rep": by_rep or {}, "by_source": {}, "by_segment": {}}


WINDOWS = {
    "mtd": window({"revenue_won": 40000.0, "leads": 12}, {"alice": {"revenue_won": 25000.0, "leads": 5}}),
    "qtd": window({"revenue_won": 90000.0, "leads": 30}, {"alice": {"revenue_won": 50000.0, "leads": 11}}),
    "ytd": window({"revenue_won": 400000.0, "leads": 100}),
}


def test_mid_period_figures_exactly() -> None:
    # Nov 15 of a 30-day month: 15 days elapsed, counting T's day.
    revenue = Target(kpi="revenue_won", period="2026-11", scope="total", value=100000)
    got = evaluate(revenue, date(2026, 11, 15), WINDOWS, weighted_pipeline=30000.0)
    assert got == {
        "kpi": "revenue_won", "period": "2026-11", "scope": "total", "target": 100000.0,
        "actual": 40000.0, "attainment": 0.4, "elapsed": 0.5, "pace": 0.8, "projected": 80000.0,
        "status": "behind", "coverage": 0.5,  # 30000 / (100000 - 40000)
    }  # fmt: skip
    # Q4: Oct 1 - Dec 31 is 92 days, Nov 15 is day 46; a rep's leads; coverage only for revenue.
    leads = Target(kpi="leads", period="2026-Q4", scope="rep:alice", value=20)
    got = evaluate(leads, date(2026, 11, 15), WINDOWS, weighted_pipeline=30000.0)
    assert got is not None
    assert (got["actual"], got["attainment"], got["elapsed"]) == (11, 11 / 20, 0.5)
    assert (got["pace"], got["projected"], got["status"], got["coverage"]) == (1.1, 22.0, "ahead", None)


def test_period_end_figures_exactly() -> None:
    # The last day: elapsed is 1, pace is attainment, projected is actual.
    target = Target(kpi="revenue_won", period="2026-11", scope="rep:alice", value=25000)
    got = evaluate(target, date(2026, 11, 30), WINDOWS, weighted_pipeline=30000.0)
    assert got is not None
    assert (got["actual"], got["attainment"], got["elapsed"], got["pace"]) == (25000.0, 1.0, 1.0, 1.0)
    assert (got["projected"], got["status"], got["coverage"]) == (25000.0, "on_track", None)
    met = Target(kpi="revenue_won", period="2026-11", scope="total", value=40000)
    assert evaluate(met, date(2026, 11, 30), WINDOWS, 30000.0)["coverage"] is None  # type: ignore[index]


def test_targets_outside_their_period_and_unknown_scopes() -> None:
    october = Target(kpi="leads", period="2026-10", scope="total", value=5)
    assert evaluate(october, date(2026, 11, 15), WINDOWS, 0.0) is None
    nobody = Target(kpi="leads", period="2026", scope="rep:zoe", value=5)
    got = evaluate(nobody, date(2026, 11, 15), WINDOWS, 0.0)
    assert got is not None and (got["actual"], got["attainment"], got["status"]) == (0, 0.0, "behind")
    zero = Target(kpi="leads", period="2026", scope="total", value=0)
    got = evaluate(zero, date(2026, 11, 15), WINDOWS, 0.0)
    assert got is not None and (got["attainment"], got["pace"], got["status"]) == (None, None, None)


def test_status_thresholds() -> None:
    assert [status_of(p) for p in (1.1, 1.0999, 0.9, 0.8999, None)] == [
        "ahead", "on_track", "on_track", "behind", None,
    ]  # fmt: skip
