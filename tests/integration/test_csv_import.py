"""`kpi import` on the real Redis (and through the embedded broker and a worker).

The data is a public CRM export (tests/data/README.md): the KPIs after importing it, once or
twice, must be exactly the figures computed from the CSV itself.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from kpi_state.settings import Settings
from streams.broker import EmbeddedBroker
from tests.integration.streaming_support import (
    CONVERGE_TIMEOUT,
    Worker,
    cli_args,
    document,
    kpi,
    unique,
    wait_until,
)

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).parent.parent / "data" / "crm_sales_pipeline_sample.csv"
STAGES = "prospecting:0.1,engaging:0.5"
MAP = (
    "id=opportunity_id,owner=sales_agent,customer=account,stage=deal_stage,"
    "created_at=engage_date,closed_at=close_date,amount=close_value"
)
AS_OF = datetime(2026, 1, 1, tzinfo=UTC)


def env() -> dict[str, str]:
    return {**os.environ, "KPI_STAGES": STAGES}


def import_args(path: Path, tmp_path: Path) -> list[str]:
    rejects = tmp_path / f"{path.stem}.rejects.jsonl"
    return ["import", str(path), "--map", MAP, "--won", "Won", "--lost", "Lost", "--no-progress",
            "--rejects", str(rejects), "--json"]  # fmt: skip


def run_import(settings: Settings, path: Path, tmp_path: Path) -> dict[str, Any]:
    out = kpi(*import_args(path, tmp_path), *cli_args(settings), env=env()).stdout
    summary: dict[str, Any] = orjson.loads(out)
    return summary


def figures_from_csv(path: Path) -> dict[str, Any]:
    """The won/lost/revenue/win-rate/new-customer figures, computed from the file alone."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    # Usable rows: a created date, and a numeric amount when won (the others are skipped).
    rows = [r for r in rows if r["engage_date"] and (r["deal_stage"] != "Won" or r["close_value"].isdigit())]
    won = [r for r in rows if r["deal_stage"] == "Won"]
    lost = [r for r in rows if r["deal_stage"] == "Lost"]
    return {
        "deals_won": len(won),
        "deals_lost": len(lost),
        "revenue_won": float(sum(int(r["close_value"]) for r in won)),
        "win_rate": len(won) / (len(won) + len(lost)),
        "new_customers": len({r["account"] or r["opportunity_id"] for r in won}),
        "deals_created": len(rows),
        "open_engaging": sum(1 for r in rows if r["deal_stage"] == "Engaging"),
    }


def figures_in_store(settings: Settings) -> dict[str, Any]:
    doc = document(settings, AS_OF)
    total = doc["windows"]["all"]["total"]
    got = {k: total[k] for k in ("deals_won", "deals_lost", "revenue_won", "win_rate", "new_customers")}
    got["deals_created"] = total["deals_created"]
    got["open_engaging"] = doc["current"]["pipeline"]["by_stage"]["engaging"]["open_deals"]
    return got


def test_public_export_imported_twice_gives_the_csv_figures(
    tmp_path: Path, namespaces: Callable[..., Settings]
) -> None:
    ns = namespaces(stages=STAGES)
    expected = figures_from_csv(SAMPLE)
    assert expected["deals_won"] > 100 and expected["deals_lost"] > 50  # a real sample, not a toy

    first = run_import(ns, SAMPLE, tmp_path)
    prospecting = sum(1 for r in csv.DictReader(SAMPLE.read_text().splitlines()) if not r["engage_date"])
    assert first["rows"] == 400
    assert first["rows_by_outcome"] == {"changed": 400 - prospecting, "skipped": prospecting}
    assert first["reasons"] == {"missing_created_at": prospecting}
    assert figures_in_store(ns) == expected
    state = document(ns, AS_OF)

    second = run_import(ns, SAMPLE, tmp_path)
    assert second["rows_by_outcome"] == {"unchanged": 400 - prospecting, "skipped": prospecting}
    assert document(ns, AS_OF) == state

    # Every skipped row is reported with its line number (header = line 1) and reason.
    rejects = [
        orjson.loads(line) for line in (tmp_path / f"{SAMPLE.stem}.rejects.jsonl").read_bytes().splitlines()
    ]
    lines = SAMPLE.read_text().splitlines()
    assert len(rejects) == prospecting
    for reject in rejects:
        assert reject["reason"] == "missing_created_at"
        assert ",Prospecting,," in lines[reject["line"] - 1]


def test_a_later_export_sends_only_what_changed(tmp_path: Path, namespaces: Callable[..., Settings]) -> None:
    ns = namespaces(stages=STAGES)
    with open(SAMPLE, newline="") as handle:
        reader = csv.DictReader(handle)
        fields = list(reader.fieldnames or [])
        rows = list(reader)
    run_import(ns, SAMPLE, tmp_path)

    won = next(r for r in rows if r["deal_stage"] == "Won")
    won["close_value"] = str(int(won["close_value"]) + 1000)  # amount corrected after the win
    lost = next(r for r in rows if r["deal_stage"] == "Lost")
    lost["sales_agent"] = "Someone Else"  # reassigned
    engaging = next(r for r in rows if r["deal_stage"] == "Engaging")
    engaging.update(deal_stage="Won", close_date="2017-12-30", close_value="777", account="NewCo")
    rows.append(dict(rows[0], opportunity_id="NEWROW01"))  # a new record
    bad = dict(rows[1], opportunity_id="BADROW01", close_value="n/a", deal_stage="Won")
    rows.append(bad)
    later = tmp_path / "later.csv"
    with open(later, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)

    summary = run_import(ns, later, tmp_path)
    skipped = sum(1 for r in rows if not r["engage_date"]) + 1
    assert summary["rows_by_outcome"] == {
        "changed": 4,
        "skipped": skipped,
        "unchanged": len(rows) - 4 - skipped,
    }
    assert summary["reasons"]["bad_amount"] == 1
    assert figures_in_store(ns) == figures_from_csv(later)
    by_rep = document(ns, AS_OF)["windows"]["all"]["by_rep"]
    assert by_rep["Someone Else"]["deals_lost"] == 1


def test_import_through_the_broker_and_a_worker(
    broker: EmbeddedBroker,
    tmp_path: Path,
    namespaces: Callable[..., Settings],
    workers: Callable[..., Worker],
) -> None:
    topic = unique("t")
    ws = namespaces(kafka_url=broker.url, topic=topic, consumer_group=unique("g"), stages=STAGES)
    worker = workers(ws, env={"KPI_STAGES": STAGES})
    worker.wait_ready()
    args = import_args(SAMPLE, tmp_path)
    out = kpi(*args, "--kafka-url", broker.url, "--topic", topic, env=env()).stdout
    summary = orjson.loads(out)
    assert summary["rows_by_outcome"]["sent"] == summary["rows"] - summary["rows_by_outcome"]["skipped"]
    expected = figures_from_csv(SAMPLE)
    wait_until(lambda: figures_in_store(ws) == expected, CONVERGE_TIMEOUT, "the CSV figures", worker)
    state = document(ws, AS_OF)
    kpi(*args, "--kafka-url", broker.url, "--topic", topic, env=env())  # the same export again

    def duplicates() -> float:
        return sum(v for k, v in worker.metrics().items() if k.startswith("kpi_events_duplicate_total"))

    wait_until(
        lambda: duplicates() >= summary["events"], CONVERGE_TIMEOUT, "the re-import's duplicates", worker
    )
    assert document(ws, AS_OF) == state


def test_skipped_rows_are_shown_with_line_numbers(
    tmp_path: Path, namespaces: Callable[..., Settings]
) -> None:
    ns = namespaces()
    export = tmp_path / "export.csv"
    export.write_text(
        "Id,Owner,Stage,Amount,Created,Closed\n"
        "D1,alice,won,100,2026-01-05,2026-02-01\n"
        'D2,bob,won,"12,5 EUR",2026-01-06,2026-02-02\n'
        "D3,bob,closing,,2026-01-07,\n"
    )
    columns = "id=Id,owner=Owner,stage=Stage,amount=Amount,created_at=Created,closed_at=Closed"
    rejects = str(tmp_path / "r.jsonl")
    out = kpi("import", str(export), "--map", columns, "--no-progress", "--rejects", rejects, *cli_args(ns))
    assert "changed 1" in out.stdout and "skipped 2" in out.stdout
    assert "line 3: bad_amount: amount '12,5 EUR'" in out.stderr
    assert "line 4: unknown_stage: stage 'closing'" in out.stderr
