"""Calendar windows through the CLI: `kpi replay`, then `kpi show --window` and the JSON
document, hand-counted; the fiscal year start changed with no replay (DESIGN section 3)."""

from __future__ import annotations

import os
from pathlib import Path

import orjson

from kpi_state.settings import Settings
from tests.conftest import SettingsFactory
from tests.integration.streaming_support import cli_args, kpi

# One lead a day on these local (UTC) days; read at 2026-03-10.
DAYS = ("2025-01-20", "2025-02-05", "2025-03-09", "2025-03-11", "2025-11-30", "2026-01-15", "2026-02-10",
        "2026-02-11", "2026-03-01", "2026-03-10")  # fmt: skip
AS_OF = "2026-03-10T12:00:00Z"


def lead_line(day: str) -> bytes:
    event = {"type": "lead.created", "event_id": f"lc-{day}", "occurred_at": f"{day}T08:00:00Z",
             "lead_id": f"L-{day}", "rep_id": "alice"}  # fmt: skip
    return orjson.dumps(event) + b"\n"


def lead_lines() -> bytes:
    return b"".join(lead_line(day) for day in DAYS)


def leads_by_window(settings: Settings, env: dict[str, str] | None = None) -> dict[str, int]:
    out = kpi("show", "--format", "json", "--as-of", AS_OF, *cli_args(settings), env=env).stdout
    windows = orjson.loads(out)["windows"]
    return {name: w["total"]["leads"] for name, w in windows.items() if name[0].isalpha()}


def test_calendar_windows_after_a_replay(make_settings: SettingsFactory, tmp_path: Path) -> None:
    settings = make_settings()
    path = tmp_path / "leads.jsonl"
    path.write_bytes(lead_lines())
    kpi("replay", str(path), "--no-progress", "--reset", *cli_args(settings))

    # Calendar year. today: Mar 10; mtd: Mar 1-10 (2); qtd = ytd: Jan 1 - Mar 10 (5);
    # mtd_prev: Feb 1-10 (Feb 10, not Feb 11);
    # qtd_prev: Oct 1 - Dec 8 (Nov 30); ytd_prev: Jan 1 - Mar 10 2025 (Jan 20, Feb 5, Mar 9).
    assert leads_by_window(settings) == {
        "all": 10, "today": 1, "mtd": 2, "qtd": 5, "ytd": 5, "mtd_prev": 1, "qtd_prev": 1, "ytd_prev": 3,
    }  # fmt: skip

    # Fiscal year from February, read from the same state: Q1 Feb-Apr, so qtd = ytd: Feb 1 -
    # Mar 10 (4); qtd_prev: Nov 1 - Dec 8 (Nov 30); ytd_prev: Feb 1 - Mar 10 2025 (Feb 5, Mar 9).
    env = {**os.environ, "KPI_FISCAL_YEAR_START_MONTH": "2"}
    assert leads_by_window(settings, env) == {
        "all": 10, "today": 1, "mtd": 2, "qtd": 4, "ytd": 4, "mtd_prev": 1, "qtd_prev": 1, "ytd_prev": 2,
    }  # fmt: skip

    table = kpi("show", "--window", "ytd_prev", "--as-of", AS_OF, *cli_args(settings)).stdout
    assert "window ytd_prev" in table
    rows = [[cell.strip() for cell in line.split("│")[1:3]] for line in table.splitlines() if "│" in line]
    assert ["leads", "3"] in rows, table
