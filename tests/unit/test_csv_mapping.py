"""CSV row -> events (connectors.csv_mapping): pure, no Redis."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from connectors.csv_mapping import (
    CsvField,
    ImportOptions,
    RowMapper,
    Skip,
    parse_amount,
    parse_column_map,
    parse_pairs,
)

STAGES = ("prospecting", "qualification", "proposal", "negotiation")
EXPORTED = datetime(2026, 3, 31, 18, 0, tzinfo=UTC)
COLUMNS = "id=Id,owner=Owner,stage=Stage,amount=Amount,created_at=Created,closed_at=Closed,customer=Account"


def mapper(columns: str = COLUMNS, **options: Any) -> RowMapper:
    values: dict[str, Any] = {"columns": parse_column_map(columns), "stages": STAGES, "exported_at": EXPORTED}
    values.update(options)
    return RowMapper(ImportOptions(**values))


def row(**cells: str) -> dict[str, str | None]:
    base = {
        "Id": "D1",
        "Owner": "alice",
        "Stage": "Won",
        "Amount": "1,200.50",
        "Created": "2026-01-05",
        "Closed": "2026-02-10",
        "Account": "ACME",
    }
    base.update(cells)
    return dict(base)


def events(result: list[dict[str, Any]] | Skip) -> list[dict[str, Any]]:
    assert not isinstance(result, Skip), result
    return result


def by_type(result: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for event in result:
        out.setdefault(event["type"], []).append(event)
    return out


def test_won_row_states_creation_attributes_and_the_win() -> None:
    got = by_type(events(mapper().map_row(row())))
    assert got["deal.created"] == [
        {
            "event_id": got["deal.created"][0]["event_id"],
            "type": "deal.created",
            "occurred_at": "2026-01-05T00:00:00Z",
            "deal_id": "D1",
        }
    ]
    updates = {k: v for e in got["deal.updated"] for k, v in e.items() if k in ("rep_id", "amount")}
    assert updates == {"rep_id": "alice", "amount": 1200.5}
    assert all(e["occurred_at"] == "2026-03-31T18:00:00Z" for e in got["deal.updated"])
    (won,) = got["deal.won"]
    assert won["occurred_at"] == "2026-02-10T00:00:00Z"
    assert (won["customer_id"], won["rep_id"], won["amount"], won["deal_id"]) == (
        "ACME",
        "alice",
        1200.5,
        "D1",
    )
    assert "deal.stage_changed" not in got and "lead.created" not in got


def test_lost_row_and_case_insensitive_values() -> None:
    got = by_type(events(mapper(won="WON", lost="Closed Lost").map_row(row(Stage="closed lost", Amount=""))))
    (lost,) = got["deal.lost"]
    assert (lost["rep_id"], lost["occurred_at"]) == ("alice", "2026-02-10T00:00:00Z")
    assert "deal.won" not in got


def test_status_column_takes_precedence_over_stage() -> None:
    m = mapper(COLUMNS + ",status=Status")
    got = by_type(events(m.map_row({**row(Stage="Proposal"), "Status": "won"})))
    assert "deal.won" in got and "deal.stage_changed" not in got


def test_open_row_moves_to_its_stage_and_states_no_outcome() -> None:
    got = by_type(events(mapper().map_row(row(Stage="Proposal", Closed=""))))
    (moved,) = got["deal.stage_changed"]
    assert (moved["to_stage"], moved["occurred_at"]) == ("proposal", "2026-03-31T18:00:00Z")
    assert not {"deal.won", "deal.lost", "deal.reopened"} & got.keys()
    # The first stage is where deal.created puts a deal: no statement of its own.
    assert "deal.stage_changed" not in by_type(events(mapper().map_row(row(Stage="prospecting"))))


def test_stage_map_translates_the_export_stages() -> None:
    got = by_type(events(mapper(stage_map={"Engaging": "qualification"}).map_row(row(Stage="engaging"))))
    assert got["deal.stage_changed"][0]["to_stage"] == "qualification"


@pytest.mark.parametrize(
    ("cells", "reason"),
    [
        ({"Id": " "}, "missing_id"),
        ({"Id": "x" * 129}, "bad_id"),
        ({"Created": ""}, "missing_created_at"),
        ({"Created": "05/01/2026"}, "bad_date"),
        ({"Closed": ""}, "missing_closed_at"),
        ({"Amount": ""}, "missing_amount"),
        ({"Amount": "-5"}, "bad_amount"),
        ({"Amount": "12 EUR"}, "bad_amount"),
        ({"Stage": "Engaging", "Closed": ""}, "unknown_stage"),
    ],
)
def test_unusable_rows_are_skipped_with_a_reason(cells: dict[str, str], reason: str) -> None:
    result = mapper().map_row(row(**cells))
    assert isinstance(result, Skip)
    assert result.reason == reason and result.detail


def test_date_format_and_timezone_of_naive_dates() -> None:
    m = mapper(date_format="%m/%d/%Y", timezone="Europe/Berlin")
    got = by_type(events(m.map_row(row(Created="1/5/2026", Closed="2/10/2026"))))
    assert got["deal.created"][0]["occurred_at"] == "2026-01-05T00:00:00+01:00"
    assert got["deal.won"][0]["occurred_at"] == "2026-02-10T00:00:00+01:00"


def test_same_row_same_ids_and_a_change_changes_only_its_statement() -> None:
    first = events(mapper().map_row(row()))
    again = events(mapper(exported_at=datetime(2026, 5, 1, tzinfo=UTC)).map_row(row()))
    assert [e["event_id"] for e in first] == [e["event_id"] for e in again]
    changed = events(mapper().map_row(row(Amount="1300", Owner="bob")))
    new_ids = {e["event_id"] for e in changed} - {e["event_id"] for e in first}
    new = [e for e in changed if e["event_id"] in new_ids]
    # The owner and amount statements, and the win (it carries both; its id hashes neither).
    assert sorted(e["type"] for e in new) == ["deal.updated", "deal.updated"]
    assert {k for e in new for k in e} >= {"rep_id", "amount"}
    assert len({e["event_id"] for e in first}) == len(first)


def test_a_new_close_date_or_customer_is_a_new_outcome() -> None:
    base = by_type(events(mapper().map_row(row())))["deal.won"][0]["event_id"]
    later = by_type(events(mapper().map_row(row(Closed="2026-03-01"))))["deal.won"][0]["event_id"]
    other = by_type(events(mapper().map_row(row(Account="Initech"))))["deal.won"][0]["event_id"]
    assert len({base, later, other}) == 3


def test_source_and_segment_make_a_lead() -> None:
    m = mapper(COLUMNS + ",source=Src,segment=Seg,currency=Cur")
    got = by_type(events(m.map_row({**row(), "Src": "ads", "Seg": "smb", "Cur": "usd"})))
    (lead,) = got["lead.created"]
    assert (lead["lead_id"], lead["source"], lead["segment"]) == ("D1", "ads", "smb")
    assert {e.get("source") or e.get("segment") for e in got["lead.updated"]} == {"ads", "smb"}
    assert got["deal.won"][0]["lead_id"] == "D1" and got["deal.won"][0]["currency"] == "USD"
    # One lead across several opportunities: one lead.created id.
    m2 = mapper(COLUMNS + ",lead=Lead")
    a = by_type(events(m2.map_row({**row(), "Lead": "L9"})))["lead.created"][0]["event_id"]
    b = by_type(events(m2.map_row({**row(Id="D2"), "Lead": "L9"})))["lead.created"][0]["event_id"]
    assert a == b


def test_won_without_account_is_its_own_customer_and_without_owner_unassigned() -> None:
    won = by_type(events(mapper().map_row(row(Account="", Owner=""))))["deal.won"][0]
    assert (won["customer_id"], won["rep_id"]) == ("D1", "unassigned")


def test_options_are_validated() -> None:
    with pytest.raises(ValidationError, match="created_at"):
        ImportOptions(columns={CsvField.id: "a", CsvField.stage: "s"}, stages=STAGES, exported_at=EXPORTED)
    with pytest.raises(ValidationError, match="status or stage"):
        ImportOptions(
            columns={CsvField.id: "a", CsvField.created_at: "c"}, stages=STAGES, exported_at=EXPORTED
        )
    with pytest.raises(ValidationError, match="offset"):
        mapper(exported_at=datetime(2026, 1, 1))
    with pytest.raises(ValidationError, match="not a configured stage"):
        mapper(stage_map={"Engaging": "engaging"})
    with pytest.raises(ValueError, match="unknown field"):
        parse_column_map("id=a,price=b")
    with pytest.raises(ValueError, match="name=value"):
        parse_pairs("a=b,c", "--stage-map")


@pytest.mark.parametrize(("text", "value"), [("12", 12.0), ("1,234.50", 1234.5), ("1 000", 1000.0)])
def test_amounts(text: str, value: float) -> None:
    assert parse_amount(text) == value
