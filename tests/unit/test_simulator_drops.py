"""Injected rate drops in the simulator (kpi_app.simulation.drops): scope, size, start, and no
effect on a history without them."""

from __future__ import annotations

import math
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from kpi_app.cli import app
from kpi_app.simulation import SimConfig, simulate_history
from kpi_app.simulation.drops import RateDrop, parse_drop

START = datetime(2026, 1, 5, tzinfo=UTC)
DROP_AT = START + timedelta(days=20)
END = START + timedelta(days=40)

Event = dict[str, object]


def _qualification_by_source(events: list[Event], since: datetime, until: datetime) -> dict[str, float]:
    """Qualified / created per source, over leads created in ``[since, until)``."""
    return {source: q / n for source, (q, n) in _qualified_and_leads(events, since, until).items()}


def _qualified_and_leads(events: list[Event], since: datetime, until: datetime) -> dict[str, tuple[int, int]]:
    lo, hi = since.isoformat().replace("+00:00", ""), until.isoformat().replace("+00:00", "")
    source_of: dict[object, str] = {}
    leads: Counter[str] = Counter()
    for e in events:
        if e["type"] == "lead.created" and lo <= str(e["occurred_at"]) < hi:
            source_of[e["lead_id"]] = str(e["source"])
            leads[str(e["source"])] += 1
    qualified = Counter(
        source_of[e["lead_id"]] for e in events if e["type"] == "lead.qualified" and e["lead_id"] in source_of
    )
    return {source: (qualified[source], n) for source, n in leads.items()}


def test_a_drop_in_one_source_lowers_only_that_sources_qualification_from_its_start() -> None:
    config = SimConfig(seed=7, leads_per_day=400, corrections=False)
    calm = list(simulate_history(config, start=START, end=END))
    drop = RateDrop("qualification", 0.7, DROP_AT, source="web")
    dropped = list(
        simulate_history(
            SimConfig(seed=7, leads_per_day=400, corrections=False, drops=(drop,)), start=START, end=END
        )
    )
    before_calm = _qualification_by_source(calm, START, DROP_AT - timedelta(days=10))
    before_drop = _qualification_by_source(dropped, START, DROP_AT - timedelta(days=10))
    # Decisions taking effect before the start are the same decisions; a lead created 10 days
    # earlier still qualifies after it now and then (the delay is exponential, mean 1.5 days).
    for source, rate in before_calm.items():
        assert abs(before_drop[source] - rate) < 0.005, source
    after_calm = _qualified_and_leads(calm, DROP_AT, END - timedelta(days=7))
    after_drop = _qualified_and_leads(dropped, DROP_AT, END - timedelta(days=7))
    web_ratio = (after_drop["web"][0] / after_drop["web"][1]) / (after_calm["web"][0] / after_calm["web"][1])
    assert 0.25 < web_ratio < 0.35  # falls to about 30%
    # The other sources: the two histories' draws part after the first changed decision, so
    # their rates are independent samples of one rate; they agree within 3.5 standard errors.
    for source, (q_calm, n_calm) in after_calm.items():
        if source != "web":
            q_drop, n_drop = after_drop[source]
            pooled = (q_calm + q_drop) / (n_calm + n_drop)
            error = math.sqrt(pooled * (1 - pooled) * (1 / n_calm + 1 / n_drop))
            assert abs(q_drop / n_drop - q_calm / n_calm) < 3.5 * error, source


def test_conversion_drop_leaves_qualification_and_cuts_won_deals() -> None:
    drop = RateDrop("conversion", 0.7, START, source="web")
    config = SimConfig(seed=3, leads_per_day=300, corrections=False)
    calm = list(simulate_history(config, start=START, end=END))
    dropped = list(
        simulate_history(
            SimConfig(seed=3, leads_per_day=300, corrections=False, drops=(drop,)), start=START, end=END
        )
    )
    q_calm = _qualification_by_source(calm, START, END - timedelta(days=7))
    q_drop = _qualification_by_source(dropped, START, END - timedelta(days=7))
    assert 0.9 < q_drop["web"] / q_calm["web"] < 1.1

    def deals_from_web(events: list[Event]) -> int:
        web = {e["lead_id"] for e in events if e["type"] == "lead.created" and e["source"] == "web"}
        return sum(1 for e in events if e["type"] == "deal.created" and e["lead_id"] in web)

    assert 0.2 < deals_from_web(dropped) / deals_from_web(calm) < 0.4


def test_drops_that_never_apply_draw_no_random_numbers() -> None:
    config = SimConfig(seed=5, leads_per_day=200)
    later = END + timedelta(days=365)
    drops = tuple(RateDrop(rate, 0.5, later) for rate in ("qualification", "stage", "win", "conversion"))
    calm = list(simulate_history(config, start=START, end=END))
    assert (
        list(simulate_history(SimConfig(seed=5, leads_per_day=200, drops=drops), start=START, end=END))
        == calm
    )


def test_parse_drop_reads_every_scope() -> None:
    assert parse_drop("qualification:source=web:0.7:2026-01-20T00:00:00Z") == RateDrop(
        "qualification", 0.7, datetime(2026, 1, 20, tzinfo=UTC), source="web"
    )
    assert parse_drop("win:segment=smb:0.5:2026-01-20T00:00:00+01:00").segment == "smb"
    total = parse_drop("stage:total:1:2026-01-20T00:00:00Z")
    assert (total.source, total.segment, total.scope) == (None, None, "total")


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("qualification:source=web:0.7", "expected RATE:SCOPE:SIZE:START"),
        ("speed:source=web:0.7:2026-01-20T00:00:00Z", "rate 'speed'"),
        ("win:region=eu:0.7:2026-01-20T00:00:00Z", "scope 'region=eu'"),
        ("win:source=fax:0.7:2026-01-20T00:00:00Z", "unknown source 'fax'"),
        ("win:segment=huge:0.7:2026-01-20T00:00:00Z", "unknown segment 'huge'"),
        ("win:total:1.5:2026-01-20T00:00:00Z", "size must be in (0, 1]"),
        ("win:total:0:2026-01-20T00:00:00Z", "size must be in (0, 1]"),
        ("win:total:x:2026-01-20T00:00:00Z", "size 'x' is not a number"),
        ("win:total:0.5:yesterday", "not an RFC 3339 time"),
        ("win:total:0.5:2026-01-20T00:00:00", "needs an offset"),
    ],
)
def test_parse_drop_refuses_bad_specs_saying_why(text: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=re.escape(complaint)):
        parse_drop(text)


def test_kpi_simulate_refuses_a_bad_drop_with_a_clear_error() -> None:
    result = CliRunner().invoke(
        app,
        [
            "simulate",
            "--history-days",
            "1",
            "--output",
            "/dev/null",
            "--drop",
            "win:source=fax:0.7:2026-01-20T00:00:00Z",
        ],
    )
    assert result.exit_code == 2
    assert "unknown source 'fax'" in result.output


def test_kpi_simulate_writes_a_history_with_a_drop(tmp_path: Path) -> None:
    out = tmp_path / "h.jsonl"
    args = ["simulate", "--history-days", "2", "--end", "2026-01-07T00:00:00Z", "--output", str(out)]
    result = CliRunner().invoke(app, [*args, "--drop", "qualification:source=web:1:2026-01-05T00:00:00Z"])
    assert result.exit_code == 0, result.output
    events = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    web = {e["lead_id"] for e in events if e["type"] == "lead.created" and e["source"] == "web"}
    qualified = {e["lead_id"] for e in events if e["type"] == "lead.qualified"}
    assert len(web) > 50 and qualified  # a size of 1: no web lead qualifies, the others do
    assert not web & qualified
