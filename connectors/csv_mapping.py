"""One CSV row (the current state of one opportunity) -> contract-v2 events. Pure: no I/O.

Stateless and deterministic: every statement's ``event_id`` is a hash of the record, the
attribute and its value (an outcome also hashes its close date and customer), never of the
import time. So importing the same export again yields only duplicates, and a later export of
the same records yields new ids exactly for the attributes that changed; the store's
de-duplication drops the rest. What a stateless import cannot see (documented in
docs/connectors.md): a value that changes and changes back between two imports keeps the id it
had the first time, and a reopened deal (the export tells neither that nor when) is not reopened.

Placement in time: ``deal.created`` and ``lead.created`` at the row's created date, ``deal.won``
and ``deal.lost`` at its close date, every other statement (owner, amount, lead, stage, source,
segment) at the export time, so a later export's statements are later than an earlier one's.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class CsvField(StrEnum):
    id = "id"
    owner = "owner"
    stage = "stage"
    status = "status"
    amount = "amount"
    currency = "currency"
    created_at = "created_at"
    closed_at = "closed_at"
    customer = "customer"
    lead = "lead"
    source = "source"
    segment = "segment"


def parse_pairs(raw: str, what: str) -> dict[str, str]:
    """``"a=b,c=d"`` -> ``{"a": "b", "c": "d"}``; a part without ``=`` is an error."""
    pairs: dict[str, str] = {}
    for part in raw.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"{what}: {part.strip()!r} is not name=value")
        pairs[key.strip()] = value.strip()
    return pairs


class ImportOptions(BaseModel):
    """The mapping of one import: which column holds which field, and how to read values."""

    model_config = ConfigDict(frozen=True)

    columns: dict[CsvField, str]
    stages: tuple[str, ...] = Field(min_length=1)  # the configured pipeline stages, in order
    exported_at: datetime  # when the export was taken: the time of every plain statement
    timezone: str = "UTC"  # of dates without an offset
    date_format: str | None = None  # strptime format; None: ISO 8601 dates or date-times
    won: str = "won"  # the status (or stage) value of a won deal, compared case-insensitively
    lost: str = "lost"
    stage_map: dict[str, str] = Field(default_factory=dict)  # export's stage -> configured stage

    @field_validator("exported_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("exported_at needs an offset")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        ZoneInfo(value)
        return value

    @model_validator(mode="after")
    def _required(self) -> ImportOptions:
        missing = [f.value for f in (CsvField.id, CsvField.created_at) if f not in self.columns]
        if missing:
            raise ValueError(f"--map needs {' and '.join(missing)}")
        if CsvField.status not in self.columns and CsvField.stage not in self.columns:
            raise ValueError("--map needs status or stage (the won/lost values are looked up there)")
        for vendor, stage in self.stage_map.items():
            if stage not in self.stages:
                raise ValueError(f"--stage-map {vendor}={stage}: {stage!r} is not a configured stage")
        return self


def parse_column_map(raw: str) -> dict[CsvField, str]:
    fields = {f.value for f in CsvField}
    result: dict[CsvField, str] = {}
    for name, column in parse_pairs(raw, "--map").items():
        if name not in fields:
            raise ValueError(f"--map: unknown field {name!r} (fields: {', '.join(sorted(fields))})")
        result[CsvField(name)] = column
    return result


@dataclass(frozen=True)
class Skip:
    """A row that cannot be used: ``reason`` is a stable code, ``detail`` says what was wrong."""

    reason: str
    detail: str


class RowError(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def event_id(kind: str, record: str, attribute: str, *values: str) -> str:
    """Deterministic id of one statement: the same record, attribute and value, the same id."""
    digest = hashlib.sha256("\x1f".join((kind, record, attribute, *values)).encode()).hexdigest()
    return f"csv-{digest[:40]}"


_AMOUNT = re.compile(r"^\d+(\.\d+)?$")


def parse_amount(text: str) -> float:
    """``"1234.5"``, ``"1,234.50"``, ``"1 234"``: thousands separators go, the dot is decimal."""
    cleaned = text.replace(",", "").replace(" ", "").replace("_", "")
    if not _AMOUNT.match(cleaned):
        raise RowError("bad_amount", f"amount {text!r} is not a non-negative number")
    return float(cleaned)


def _iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


class RowMapper:
    """Maps rows with one ``ImportOptions``; ``map_row`` is pure."""

    def __init__(self, options: ImportOptions) -> None:
        self.options = options
        self._zone = ZoneInfo(options.timezone)
        self._stages = {s.casefold(): s for s in options.stages}
        self._stage_map = {k.casefold(): v for k, v in options.stage_map.items()}
        self._exported = _iso(options.exported_at)

    def _cell(self, row: Mapping[str, str | None], name: CsvField) -> str | None:
        column = self.options.columns.get(name)
        if column is None:
            return None
        value = row.get(column)
        if value is None:
            return None
        value = value.strip()
        return value or None

    def parse_date(self, text: str, name: CsvField) -> datetime:
        try:
            if self.options.date_format:
                ts = datetime.strptime(text, self.options.date_format)
            else:
                ts = datetime.fromisoformat(text)
        except ValueError as exc:
            raise RowError("bad_date", f"{name.value} {text!r}: {exc}") from exc
        if ts.tzinfo is None or ts.utcoffset() is None:
            ts = ts.replace(tzinfo=self._zone)
        return ts

    def _stage(self, value: str) -> str:
        key = value.casefold()
        stage = self._stage_map.get(key) or self._stages.get(key)
        if stage is None:
            raise RowError(
                "unknown_stage", f"stage {value!r} is neither a configured stage nor in --stage-map"
            )
        return stage

    def map_row(self, row: Mapping[str, str | None]) -> list[dict[str, Any]] | Skip:
        try:
            return self._map(row)
        except RowError as exc:
            return Skip(exc.reason, exc.detail)

    def _map(self, row: Mapping[str, str | None]) -> list[dict[str, Any]]:
        opts = self.options
        deal = self._cell(row, CsvField.id)
        if deal is None:
            raise RowError("missing_id", "the id column is empty")
        if len(deal) > 128:
            raise RowError("bad_id", "the id is longer than 128 characters")
        created_text = self._cell(row, CsvField.created_at)
        if created_text is None:
            raise RowError("missing_created_at", "the created date is empty")
        created = _iso(self.parse_date(created_text, CsvField.created_at))
        status = self._cell(row, CsvField.status) or self._cell(row, CsvField.stage) or ""
        outcome = {opts.won.casefold(): "won", opts.lost.casefold(): "lost"}.get(status.casefold())
        owner = self._cell(row, CsvField.owner)
        amount_text = self._cell(row, CsvField.amount)
        amount = parse_amount(amount_text) if amount_text is not None else None
        currency = self._cell(row, CsvField.currency)
        if currency is not None:
            currency = currency.upper()
        customer = self._cell(row, CsvField.customer)
        source = self._cell(row, CsvField.source)
        segment = self._cell(row, CsvField.segment)
        lead = self._cell(row, CsvField.lead)
        if lead is None and (source is not None or segment is not None):
            lead = deal  # the source/segment belong to a lead: the opportunity is its own lead
        stage_text = self._cell(row, CsvField.stage)
        stage = self._stage(stage_text) if outcome is None and stage_text is not None else None
        closed: str | None = None
        if outcome is not None:
            closed_text = self._cell(row, CsvField.closed_at)
            if closed_text is None:
                raise RowError("missing_closed_at", f"a {outcome} deal without a close date")
            closed = _iso(self.parse_date(closed_text, CsvField.closed_at))
            if outcome == "won" and amount is None:
                raise RowError("missing_amount", "a won deal without an amount")

        at = self._exported
        events: list[dict[str, Any]] = []
        if lead is not None:
            created_lead: dict[str, Any] = {
                "event_id": event_id("lead", lead, "created"),
                "type": "lead.created",
                "occurred_at": created,
                "lead_id": lead,
            }
            events.append(created_lead)
            for name, value in (("source", source), ("segment", segment)):
                if value is not None:
                    created_lead[name] = value
                    events.append(
                        {
                            "event_id": event_id("lead", lead, name, value),
                            "type": "lead.updated",
                            "occurred_at": at,
                            "lead_id": lead,
                            name: value,
                        }
                    )
        events.append(
            {"event_id": event_id("deal", deal, "created"), "type": "deal.created", "occurred_at": created}
        )
        updates: list[tuple[str, dict[str, Any], tuple[str, ...]]] = []
        if owner is not None:
            updates.append(("owner", {"rep_id": owner}, (owner,)))
        if amount is not None:
            money: dict[str, Any] = {"amount": amount}
            if currency is not None:
                money["currency"] = currency
            updates.append(("amount", money, (repr(amount), currency or "")))
        if lead is not None:
            updates.append(("lead", {"lead_id": lead}, (lead,)))
        for attribute, fields, values in updates:
            events.append(
                {
                    "event_id": event_id("deal", deal, attribute, *values),
                    "type": "deal.updated",
                    "occurred_at": at,
                    **fields,
                }
            )
        if stage is not None and stage != opts.stages[0]:
            events.append(
                {
                    "event_id": event_id("deal", deal, "stage", stage),
                    "type": "deal.stage_changed",
                    "occurred_at": at,
                    "to_stage": stage,
                }
            )
        if outcome is not None and closed is not None:
            rep = owner or "unassigned"
            final: dict[str, Any] = {"type": f"deal.{outcome}", "occurred_at": closed, "rep_id": rep}
            if outcome == "won":
                cust = customer or deal  # no account: the deal is its own customer
                final["event_id"] = event_id("deal", deal, "outcome", "won", closed, cust)
                final["customer_id"] = cust
                final["amount"] = amount
                if currency is not None:
                    final["currency"] = currency
            else:
                final["event_id"] = event_id("deal", deal, "outcome", "lost", closed)
            if lead is not None:
                final["lead_id"] = lead
            events.append(final)
        for event in events:
            if event["type"].startswith("deal."):
                event["deal_id"] = deal
        return events
