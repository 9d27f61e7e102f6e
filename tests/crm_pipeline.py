"""A CRM opportunities CSV in the schema of Maven Analytics' "CRM Sales Opportunities"
(sales_pipeline.csv: opportunity_id, sales_agent, product, account, deal_stage, engage_date,
close_date, close_value), replayed with `kpi replay` and checked against counts taken
straight from the CSV for every calendar window, at several evaluation times and fiscal
years.

Rows become events: a deal created on its engage date (by its agent), won on its close date
for its account with its close value, or lost on its close date; "Engaging" deals stay open;
"Prospecting" rows have no date and are left out (by both sides). Events happen at 12:00 UTC.

The expected figures are counted from the CSV rows with the reference's own date filter
(tests/reference.py), not with kpi_state's window code.

``python -m tests.crm_pipeline FILE [--as-of T ...]`` runs the check on any such file
against the local Redis (a throwaway namespace) and prints one line per evaluation.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import orjson

from kpi_app.bootstrap import build_runtime
from kpi_state.settings import Settings
from tests.integration.streaming_support import cli_args, kpi
from tests.reference import _in_calendar_window

WINDOWS = ("today", "mtd", "qtd", "ytd", "mtd_prev", "qtd_prev", "ytd_prev")
CHECKED = ("deals_created", "deals_won", "deals_lost", "revenue_won", "new_customers")


@dataclass(frozen=True)
class Row:
    opportunity_id: str
    agent: str
    account: str
    stage: str
    engaged: date | None
    closed: date | None
    value: float


def parse_day(text: str) -> date | None:
    """``2017-03-01`` or ``3/1/2017`` (both circulate), or empty."""
    text = text.strip()
    if not text:
        return None
    if "/" in text:
        month, day, year = (int(p) for p in text.split("/"))
        return date(year, month, day)
    return date.fromisoformat(text)


def read_rows(text: str) -> list[Row]:
    return [
        Row(
            r["opportunity_id"],
            r["sales_agent"],
            r["account"] or r["opportunity_id"],
            r["deal_stage"],
            parse_day(r["engage_date"]),
            parse_day(r["close_date"]),
            float(r["close_value"] or 0),
        )
        for r in csv.DictReader(io.StringIO(text))
    ]


def _at(day: date) -> str:
    return f"{day.isoformat()}T12:00:00Z"


def events(rows: Iterable[Row]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for r in rows:
        if r.engaged is None:
            continue
        deal = {"deal_id": r.opportunity_id, "rep_id": r.agent}
        out.append(
            {
                "type": "deal.created",
                "event_id": f"dc-{r.opportunity_id}",
                "occurred_at": _at(r.engaged),
                **deal,
            }
        )
        if r.closed is None:
            continue
        if r.stage == "Won":
            won = {"customer_id": r.account, "amount": r.value, **deal}
            out.append(
                {
                    "type": "deal.won",
                    "event_id": f"dw-{r.opportunity_id}",
                    "occurred_at": _at(r.closed),
                    **won,
                }
            )
        elif r.stage == "Lost":
            out.append(
                {
                    "type": "deal.lost",
                    "event_id": f"dl-{r.opportunity_id}",
                    "occurred_at": _at(r.closed),
                    **deal,
                }
            )
    return out


def expected(rows: Sequence[Row], window: str, today: date, settings: Settings) -> dict[str, float]:
    """The checked KPIs of ``window`` counted from the rows."""

    def inside(day: date | None) -> bool:
        return day is not None and _in_calendar_window(day, window, today, settings)

    dated = [r for r in rows if r.engaged is not None]
    won = [r for r in dated if r.stage == "Won" and inside(r.closed)]
    first_win: dict[str, tuple[date, str]] = {}
    for r in dated:
        if r.stage == "Won" and r.closed is not None:
            key = (r.closed, f"dw-{r.opportunity_id}")
            first_win[r.account] = min(first_win.get(r.account, key), key)
    return {
        "deals_created": sum(1 for r in dated if inside(r.engaged)),
        "deals_won": len(won),
        "deals_lost": sum(1 for r in dated if r.stage == "Lost" and inside(r.closed)),
        "revenue_won": sum(r.value for r in won),
        "new_customers": sum(1 for day, _ in first_win.values() if inside(day)),
    }


def check(settings: Settings, rows: Sequence[Row], as_ofs: Sequence[str], fiscal_months: Sequence[int],
          workdir: Path) -> list[str]:  # fmt: skip
    """Replay the rows into ``settings``' namespace, then compare every calendar window at every
    evaluation time and fiscal year start; returns one report line per evaluation (raises on a
    difference)."""
    path = workdir / "crm-events.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events(rows)))
    kpi("replay", str(path), "--no-progress", "--reset", *cli_args(settings))
    lines = []
    for fiscal in fiscal_months:
        env = {**os.environ, "KPI_FISCAL_YEAR_START_MONTH": str(fiscal)}
        local = settings.model_copy(update={"fiscal_year_start_month": fiscal})
        for as_of in as_ofs:
            out = kpi("show", "--format", "json", "--as-of", as_of, *cli_args(settings), env=env).stdout
            windows = orjson.loads(out)["windows"]
            today = datetime.fromisoformat(as_of).astimezone(settings.tz).date()
            for window in WINDOWS:
                got = {k: windows[window]["total"][k] for k in CHECKED}
                want = expected(rows, window, today, local)
                if got != want:
                    raise AssertionError(f"fiscal {fiscal}, {as_of}, {window}: got {got}, counted {want}")
            summary = ", ".join(
                f"{w} {t['deals_created']}/{t['deals_won']}/{t['revenue_won']:.0f}"
                for w in WINDOWS
                for t in [windows[w]["total"]]
            )
            lines.append(f"fiscal {fiscal:2d} as of {as_of}: created/won/revenue {summary}")
    return lines


async def _clear(settings: Settings) -> None:
    runtime = build_runtime(settings)
    try:
        await runtime.store.clear()
    finally:
        await runtime.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description="Check calendar windows against a CRM CSV.")
    parser.add_argument("csv", type=Path)
    parser.add_argument("--as-of", action="append", dest="as_ofs")
    args = parser.parse_args()
    as_ofs = args.as_ofs or [
        "2017-03-15T18:00:00Z",
        "2017-06-30T23:59:59Z",
        "2017-10-01T00:00:00Z",
        "2017-11-15T12:00:00Z",
        "2017-12-31T23:59:59Z",
        "2018-01-15T12:00:00Z",
    ]
    settings = Settings(namespace=f"crm-check-{uuid.uuid4().hex[:8]}")
    import tempfile

    rows = read_rows(args.csv.read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for line in check(settings, rows, as_ofs, (1, 2), Path(tmp)):
                print(line)
            print(
                f"{len(rows)} rows, {len(events(rows))} events: every calendar window equals the CSV counts"
            )
        finally:
            asyncio.run(_clear(settings))


if __name__ == "__main__":
    main()
