"""The pure parts of `kpi alerts backtest`: alert states (Prometheus's for/keep_firing_for), the
rule plan, the OpenMetrics text, the evaluation grid."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kpi_app.backtest.alert_state import firing_intervals
from kpi_app.backtest.openmetrics import SeriesBook, write_openmetrics
from kpi_app.backtest.rules import Rule, expand_labels, load_rules, lookback, parse_duration, plan
from kpi_app.backtest.run import evaluation_times, warmup_times

H = 3600
TIMES = list(range(0, 12 * H, H))


def _active(*pairs: tuple[str, list[int]]) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for key, hours in pairs:
        for h in hours:
            out.setdefault(h * H, set()).add(key)
    return out


def test_for_zero_fires_at_the_first_active_evaluation_and_resolves_at_the_first_inactive_one() -> None:
    assert firing_intervals(TIMES, _active(("a", [2, 3, 4])), hold=0) == {"a": [(2 * H, 5 * H)]}


def test_for_holds_pending_until_for_has_passed_since_active_at() -> None:
    assert firing_intervals(TIMES, _active(("a", [2, 3, 4])), hold=H) == {"a": [(3 * H, 5 * H)]}
    assert firing_intervals(TIMES, _active(("a", [2, 3, 4])), hold=2 * H) == {"a": [(4 * H, 5 * H)]}
    # for: 30m at hourly evaluations: the second active evaluation fires.
    assert firing_intervals(TIMES, _active(("a", [2, 3])), hold=H // 2) == {"a": [(3 * H, 4 * H)]}


def test_a_pending_alert_that_goes_missing_starts_over() -> None:
    assert firing_intervals(TIMES, _active(("a", [1, 2, 4, 5, 6])), hold=2 * H) == {"a": [(6 * H, 7 * H)]}
    assert firing_intervals(TIMES, _active(("a", [1, 2, 4, 5])), hold=2 * H) == {}


def test_an_alert_still_firing_at_the_end_has_no_end() -> None:
    assert firing_intervals(TIMES, _active(("a", [9, 10, 11])), hold=H) == {"a": [(10 * H, None)]}


def test_label_sets_are_separate_alerts() -> None:
    fired = firing_intervals(TIMES, _active(("web", [1, 2, 3]), ("events", [2, 3, 7, 8])), hold=H)
    assert fired == {"web": [(2 * H, 4 * H)], "events": [(3 * H, 4 * H), (8 * H, 9 * H)]}


def test_keep_firing_for_bridges_short_gaps_and_then_resolves() -> None:
    active = _active(("a", [1, 2, 4, 5]))
    # missing at 3: kept (3 - 3 < 2h); active again at 4, so one interval until 6, then kept at 6
    # and 7 (6 - 6, 7 - 6 < 2h) and resolved at 8.
    assert firing_intervals(TIMES, active, hold=0, keep_firing_for=2 * H) == {"a": [(H, 8 * H)]}
    # A pending alert is not kept: keep_firing_for applies to firing ones only.
    assert firing_intervals(TIMES, _active(("a", [1, 3])), hold=H, keep_firing_for=5 * H) == {}


def _rule_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yml"
    path.write_text(text, encoding="utf-8")
    return path


RULES = """
groups:
  - name: g
    rules:
      - record: scope:hits
        expr: max without (instance) (sales_qualified_leads{window="24h"})
        labels: {scope: total}
      - record: scope:hits
        expr: max without (instance) (sales_qualified_leads_by_source{window="24h"})
        labels: {scope: source}
      - record: scope:trials
        expr: max without (instance) (sales_leads{window="30d"})
      - record: scope:ratio
        expr: scope:hits / scope:trials
      - record: scope:z
        expr: scope:ratio - scope:hits
      - record: unused:thing
        expr: sales_spend{window="7d"}
      - alert: Dropped
        expr: scope:z < -3 and scope:trials >= 20
        for: 1h
        labels: {area: sales, who: "{{ $labels.source }}"}
      - alert: NoEvents
        expr: absent(kpi_events_processed_total{job="x"})
        for: 5m
"""


def test_plan_levels_families_windows_and_skipped_alerts(tmp_path: Path) -> None:
    the_plan = plan(load_rules([_rule_file(tmp_path, RULES)]))
    assert [r.alert for r in the_plan.alerts] == ["Dropped"]
    assert the_plan.skipped == ["NoEvents"]
    assert [[r.record for r in level] for level in the_plan.levels] == [
        ["scope:hits", "scope:hits", "scope:trials"],
        ["scope:ratio"],
        ["scope:z"],
    ]
    assert the_plan.families == {"sales_qualified_leads", "sales_qualified_leads_by_source", "sales_leads"}
    assert the_plan.windows == {"24h", "30d"}


def test_a_window_matcher_other_than_equals_keeps_every_window() -> None:
    rule = Rule.model_validate({"alert": "A", "expr": 'sales_leads{window=~"24h|7d"} < 1'})
    assert plan([rule]).windows is None


def test_a_cycle_of_recording_rules_is_refused() -> None:
    rules = [
        Rule.model_validate({"record": "a:x", "expr": "b:x + sales_leads"}),
        Rule.model_validate({"record": "b:x", "expr": "a:x"}),
        Rule.model_validate({"alert": "A", "expr": "a:x > 1"}),
    ]
    with pytest.raises(ValueError, match="cycle"):
        plan(rules)


def test_names_inside_strings_are_not_read_as_series() -> None:
    rule = Rule.model_validate({"alert": "A", "expr": 'kpi_up{note="sales_leads"} == 0'})
    assert plan([rule]).skipped == ["A"]


def test_malformed_rule_files_name_the_file(tmp_path: Path) -> None:
    path = _rule_file(tmp_path, "groups:\n  - name: g\n    rules:\n      - expr: up\n")
    with pytest.raises(ValueError, match=r"rules\.yml"):
        load_rules([path])


def test_label_templates_take_the_series_labels() -> None:
    assert expand_labels("{{ $labels.source }}-x", {"source": "web"}) == "web-x"
    assert expand_labels("{{$labels.missing}}", {}) == ""
    assert expand_labels("plain", {"source": "web"}) == "plain"


def test_durations() -> None:
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_duration("2d") == timedelta(days=2)
    assert parse_duration("0s") == timedelta(0)
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")


def test_openmetrics_groups_families_and_escapes() -> None:
    book = SeriesBook()
    book.add("sales_leads_by_source", ("source", "window"), [(('we"b', "24h"), 3.0)], 1_700_000_000_000)
    book.add("sales_leads_by_source", ("source", "window"), [(('we"b', "24h"), 4.5)], 1_700_003_600_500)
    book.add("sales_active_customers", (), [((), float("nan"))], 1_700_000_000_000)
    out = io.StringIO()
    write_openmetrics(book, out)
    assert out.getvalue() == (
        "# TYPE sales_active_customers gauge\n"
        "sales_active_customers NaN 1700000000\n"
        "# TYPE sales_leads_by_source gauge\n"
        'sales_leads_by_source{source="we\\"b",window="24h"} 3.0 1700000000\n'
        'sales_leads_by_source{source="we\\"b",window="24h"} 4.5 1700003600.500\n'
        "# EOF\n"
    )
    assert book.samples == 3


def test_evaluation_times_start_on_the_step_grid() -> None:
    start = datetime(2026, 1, 1, 0, 20, tzinfo=UTC)
    times = evaluation_times(start, start + timedelta(hours=3), timedelta(hours=1))
    assert times == [datetime(2026, 1, 1, h, tzinfo=UTC) for h in (1, 2, 3)]
    with pytest.raises(ValueError, match="dividing a day"):
        evaluation_times(start, start + timedelta(hours=3), timedelta(minutes=7))
    with pytest.raises(ValueError, match="before"):
        evaluation_times(start, start, timedelta(hours=1))


def test_lookback_sums_the_longest_offset_or_range_of_each_level() -> None:
    rules = [
        Rule.model_validate({"record": "a:x", "expr": 'sales_leads{window="24h"} + sales_leads offset 1d'}),
        Rule.model_validate({"record": "b:x", "expr": "a:x offset 7d + a:x offset 21d"}),
        Rule.model_validate({"record": "c:x", "expr": 'b:x / a:x{note="offset 90d"}'}),
        Rule.model_validate({"alert": "A", "expr": "max_over_time(c:x[2h:5m]) < 1", "for": "4h"}),
    ]
    assert lookback(plan(rules)) == timedelta(days=22, hours=2)
    plain = [Rule.model_validate({"alert": "A", "expr": 'sales_leads{window="7d"} < 1'})]
    assert lookback(plan(plain)) == timedelta(0)


def test_warmup_times_extend_the_grid_backwards_by_whole_steps() -> None:
    times = [datetime(2026, 1, 10, h, tzinfo=UTC) for h in (0, 1)]
    assert warmup_times(times, timedelta(hours=1), timedelta(0)) == []
    before = warmup_times(times, timedelta(hours=1), timedelta(hours=2, minutes=30))
    assert before == [datetime(2026, 1, 9, h, tzinfo=UTC) for h in (21, 22, 23)]
    with pytest.raises(ValueError, match="negative"):
        warmup_times(times, timedelta(hours=1), timedelta(hours=-1))
