"""Targets on the real store (DESIGN section 4): `kpi targets load`, the document's
``targets``, ``/metrics`` ``sales_target*`` and ``PUT /api/targets``, hand-counted mid-period
and at period end."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

from kpi_app.bootstrap import build_runtime
from kpi_app.web import create_app
from kpi_state.collector import render_metrics
from kpi_state.settings import Settings
from tests.conftest import SettingsFactory
from tests.integration.streaming_support import cli_args, kpi

# November 2026 (30 days), Q4 = Oct-Dec (92 days); weighted pipeline: D3 open in proposal.
EVENTS: list[dict[str, Any]] = [
    {"type": "lead.created", "event_id": "lc1", "occurred_at": "2026-10-20T09:00:00Z", "lead_id": "L1",
     "rep_id": "alice", "source": "web"},
    {"type": "lead.created", "event_id": "lc2", "occurred_at": "2026-11-02T09:00:00Z", "lead_id": "L2",
     "rep_id": "alice", "source": "web"},
    {"type": "lead.created", "event_id": "lc3", "occurred_at": "2026-11-10T09:00:00Z", "lead_id": "L3",
     "rep_id": "bob", "source": "ads"},
    {"type": "deal.won", "event_id": "dw1", "occurred_at": "2026-10-25T09:00:00Z", "deal_id": "D1",
     "customer_id": "C1", "rep_id": "alice", "amount": 10000.0},
    {"type": "deal.won", "event_id": "dw2", "occurred_at": "2026-11-05T09:00:00Z", "deal_id": "D2",
     "customer_id": "C2", "rep_id": "alice", "amount": 30000.0},
    {"type": "deal.created", "event_id": "dc3", "occurred_at": "2026-11-06T09:00:00Z", "deal_id": "D3",
     "rep_id": "bob", "amount": 50000.0, "stage": "proposal"},
]  # fmt: skip

TARGETS_YAML = """\
- {kpi: revenue_won, period: 2026-11, scope: total, value: 100000}
- {kpi: revenue_won, period: 2026-Q4, scope: "rep:alice", value: 50000}
- {kpi: leads, period: 2026, scope: total, value: 10}
- {kpi: leads, period: 2026-10, scope: total, value: 10}
"""
MID = "2026-11-15T12:00:00Z"
END = "2026-11-30T23:59:59Z"


def replay(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in EVENTS))
    kpi("replay", str(path), "--no-progress", "--reset", *cli_args(settings))
    targets = tmp_path / "targets.yaml"
    targets.write_text(TARGETS_YAML)
    assert kpi("targets", "load", str(targets), *cli_args(settings)).stdout.strip() == "loaded 4 targets"


def figures(settings: Settings, as_of: str) -> list[dict[str, Any]]:
    out = kpi("targets", "show", "--json", "--as-of", as_of, *cli_args(settings)).stdout
    doc = kpi("show", "--format", "json", "--as-of", as_of, *cli_args(settings)).stdout
    targets: list[dict[str, Any]] = orjson.loads(out)["targets"]
    assert orjson.loads(doc)["targets"] == targets
    return targets


def test_targets_mid_period_and_at_period_end(make_settings: SettingsFactory, tmp_path: Path) -> None:
    settings = make_settings()
    replay(settings, tmp_path)
    proposal = settings.stage_list[settings.stage_names.index("proposal")].probability
    # Nov 15: 15/30 of November, 46/92 of Q4, 319/365 of 2026. October's target is over.
    mid = figures(settings, MID)
    year_elapsed = 319 / 365
    assert mid == [
        {"kpi": "revenue_won", "period": "2026-11", "scope": "total", "target": 100000.0, "actual": 30000.0,
         "attainment": 0.3, "elapsed": 0.5, "pace": 0.6, "projected": 60000.0, "status": "behind",
         "coverage": 50000.0 * proposal / 70000.0},
        {"kpi": "revenue_won", "period": "2026-Q4", "scope": "rep:alice", "target": 50000.0,
         "actual": 40000.0, "attainment": 0.8, "elapsed": 0.5, "pace": 1.6, "projected": 80000.0,
         "status": "ahead",
         "coverage": None},
        {"kpi": "leads", "period": "2026", "scope": "total", "target": 10.0, "actual": 3,
         "attainment": 0.3, "elapsed": year_elapsed, "pace": 0.3 / year_elapsed,
         "projected": 3 / year_elapsed, "status": "behind", "coverage": None},
    ]  # fmt: skip
    # Nov 30, the month's last second: elapsed 1 for November, 61/92 for Q4.
    end = figures(settings, END)
    assert [t["elapsed"] for t in end] == [1.0, 61 / 92, 334 / 365]
    assert (end[0]["attainment"], end[0]["pace"], end[0]["projected"]) == (0.3, 0.3, 30000.0)
    assert end[1]["pace"] == 0.8 / (61 / 92) and end[1]["status"] == "ahead"

    # A file with one bad entry is refused whole: the loaded set is unchanged.
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "- {kpi: leads, period: 2026, scope: total, value: 1}\n- {kpi: leads, period: 2026-Q5, value: 1}\n"
    )
    result = kpi_fails("targets", "load", str(bad), *cli_args(settings))
    assert f"{bad}:2: period: Value error, period must be" in " ".join(result.split())
    assert figures(settings, MID) == mid


def kpi_fails(*args: str) -> str:
    import subprocess

    from tests.integration.streaming_support import KPI

    result = subprocess.run([*KPI, *args], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1, result
    return result.stderr


def test_target_metrics(make_settings: SettingsFactory, tmp_path: Path) -> None:
    settings = make_settings()
    replay(settings, tmp_path)

    async def scrape() -> str:
        runtime = build_runtime(settings)
        try:
            body, _ = await render_metrics(runtime.reader, settings, as_of=datetime.fromisoformat(MID))
            return body.decode()
        finally:
            await runtime.aclose()

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(asyncio.run(scrape()))
        for s in family.samples
        if s.name.startswith("sales_target")
    }
    nov = (("currency", "EUR"), ("kpi", "revenue_won"), ("period", "2026-11"), ("scope", "total"))
    alice = (("kpi", "revenue_won"), ("period", "2026-Q4"), ("scope", "rep:alice"))
    assert samples[("sales_target", nov)] == 100000.0
    assert samples[("sales_target_projected", nov)] == 60000.0
    assert samples[("sales_target_attainment_ratio", nov[1:])] == 0.3
    assert samples[("sales_target_pace_ratio", nov[1:])] == 0.6
    assert samples[("sales_target_pace_ratio", alice)] == 1.6
    assert samples[("sales_target_elapsed_ratio", alice)] == 0.5
    # Three targets contain Nov 15 (October's does not): one series each per family.
    assert sorted({name for name, _ in samples}) == [
        "sales_target", "sales_target_attainment_ratio", "sales_target_elapsed_ratio",
        "sales_target_pace_ratio", "sales_target_projected",
    ]  # fmt: skip
    assert all(sum(1 for name, _ in samples if name == family) == 3 for family in {n for n, _ in samples})


def test_put_targets(make_settings: SettingsFactory) -> None:
    settings = make_settings(ingest_tokens="tok-a")
    good = [{"kpi": "leads", "period": "2026-11", "scope": "source:web", "value": 5}]

    async def main() -> None:
        runtime = build_runtime(settings)
        app = create_app(runtime, publisher=None)
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://t"
            ) as client:
                assert (await client.put("/api/targets", json=good)).status_code == 401
                wrong = await client.put("/api/targets", json=good, headers={"authorization": "Bearer nope"})
                assert wrong.status_code == 401
                auth = {"authorization": "Bearer tok-a"}
                ok = await client.put("/api/targets", json=good, headers=auth)
                assert (ok.status_code, ok.json()) == (200, {"loaded": 1})
                bad = [*good, {"kpi": "leads", "period": "2026-11", "scope": "source:ads", "value": -1}]
                refused = await client.put("/api/targets", json=bad, headers=auth)
                assert refused.status_code == 422
                assert refused.json()["problems"] == [
                    {"entry": 2, "reason": "value: Input should be greater than or equal to 0"}
                ]
                assert [t.model_dump() for t in await runtime.reader.targets.load()] == [
                    {"kpi": "leads", "period": "2026-11", "scope": "source:web", "value": 5.0}
                ]
                doc = (await client.get("/api/kpis", params={"as_of": MID, "window": "1h"})).json()
                assert list(doc["windows"]) == ["1h"]
                assert [(t["scope"], t["actual"], t["elapsed"]) for t in doc["targets"]] == [
                    ("source:web", 0, 0.5)
                ]
        finally:
            await runtime.store.clear()
            await runtime.aclose()

    asyncio.run(main())
