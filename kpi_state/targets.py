"""Targets (quotas) and pace (DESIGN section 4). Pure: parsing, validation and evaluation.

A target is ``{kpi, period, scope, value}``. ``period`` names a fiscal month, quarter or
year by its start: ``2026-11`` is November 2026; ``2026`` the fiscal year that starts in
2026 (with ``KPI_FISCAL_YEAR_START_MONTH``); ``2026-Q4`` that fiscal year's fourth quarter
(from February: Nov 2026 - Jan 2027). A set of targets is validated whole: one bad entry
refuses the set, with the line of every bad entry and its reason.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from kpi_state.periods import PeriodKind, add_months, period_elapsed, period_end, period_start

TargetKpi = Literal["revenue_won", "deals_won", "new_customers", "leads", "qualified_leads"]
MONEY_TARGETS = frozenset({"revenue_won"})
# Period to date window of each period kind.
TO_DATE_WINDOW: dict[PeriodKind, str] = {"month": "mtd", "quarter": "qtd", "year": "ytd"}
_PERIOD = re.compile(r"^(?P<year>\d{4})(?:-(?:Q(?P<quarter>[1-4])|(?P<month>0[1-9]|1[0-2])))?$")
_SCOPE = re.compile(r"^(?:total|(?P<dim>rep|source|segment):(?P<value>\S.{0,199}))$", re.S)
# Status thresholds on pace (DESIGN section 4).
AHEAD, BEHIND = 1.1, 0.9


class Target(BaseModel):
    """One target as loaded from a file or the API."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kpi: TargetKpi
    period: str
    scope: str = "total"
    value: float = Field(ge=0.0, allow_inf_nan=False)

    @field_validator("period", mode="before")
    @classmethod
    def _year_as_number(cls, value: Any) -> Any:
        # YAML reads an unquoted `period: 2026` as a number.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value

    @field_validator("period")
    @classmethod
    def _period(cls, value: str) -> str:
        if not _PERIOD.match(value):
            raise ValueError("period must be a fiscal year (2026), quarter (2026-Q4) or month (2026-11)")
        return value

    @field_validator("scope")
    @classmethod
    def _scope(cls, value: str) -> str:
        if not _SCOPE.match(value):
            raise ValueError("scope must be total, rep:<id>, source:<name> or segment:<name>")
        return value

    @property
    def key(self) -> tuple[str, str, str]:
        return self.kpi, self.period, self.scope


TARGET_LIST = TypeAdapter(list[Target])


class TargetsRefused(ValueError):
    """A set of targets refused whole: ``problems`` holds (line or position, reason)."""

    def __init__(self, problems: Sequence[tuple[int, str]], where: str = "line") -> None:
        self.problems = list(problems)
        self.where = where
        super().__init__("; ".join(f"{where} {n}: {reason}" for n, reason in self.problems))


def _reason(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'entry'}: {err['msg']}"
        for err in exc.errors(include_url=False)
    )


def validate_targets(entries: Sequence[Any], lines: Sequence[int] | None = None) -> list[Target]:
    """Every entry valid and no (kpi, period, scope) twice, or ``TargetsRefused`` naming each
    bad entry by its line (``lines``) or else its 1-based position."""
    where = "line" if lines is not None else "entry"
    problems: list[tuple[int, str]] = []
    targets: list[Target] = []
    seen: set[tuple[str, str, str]] = set()
    for i, raw in enumerate(entries):
        at = lines[i] if lines is not None else i + 1
        try:
            target = Target.model_validate(raw)
        except ValidationError as exc:
            problems.append((at, _reason(exc)))
            continue
        if target.key in seen:
            problems.append((at, f"a second target for {target.kpi} {target.period} {target.scope}"))
        seen.add(target.key)
        targets.append(target)
    if problems:
        raise TargetsRefused(problems, where)
    return targets


def parse_targets_text(text: str) -> list[Target]:
    """A YAML or JSON document holding a list of targets (JSON is read as YAML, so both keep
    the line of each entry)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise TargetsRefused([(mark.line + 1 if mark else 1, f"not YAML or JSON: {exc}")]) from exc
    if node is None:
        return []
    if not isinstance(node, yaml.SequenceNode):
        raise TargetsRefused([(node.start_mark.line + 1, "expected a list of {kpi, period, scope, value}")])
    loader = yaml.SafeLoader("")
    try:
        entries = [loader.construct_document(item) for item in node.value]
    finally:
        loader.dispose()
    return validate_targets(entries, [item.start_mark.line + 1 for item in node.value])


@dataclass(frozen=True)
class Period:
    kind: PeriodKind
    start: date

    @property
    def end(self) -> date:
        return period_end(self.start, self.kind)


def parse_period(name: str, fiscal_start_month: int = 1) -> Period:
    match = _PERIOD.match(name)
    if match is None:
        raise ValueError(f"malformed period {name!r}")
    year = int(match["year"])
    if match["month"]:
        return Period("month", date(year, int(match["month"]), 1))
    fiscal_year = date(year, fiscal_start_month, 1)
    if match["quarter"]:
        return Period("quarter", add_months(fiscal_year, 3 * (int(match["quarter"]) - 1)))
    return Period("year", fiscal_year)


def period_name(day: date, kind: PeriodKind, fiscal_start_month: int = 1) -> str:
    """The name of the fiscal month / quarter / year that contains ``day`` (parse_period's inverse)."""
    start = period_start(day, kind, fiscal_start_month)
    if kind == "month":
        return f"{start:%Y-%m}"
    year = period_start(day, "year", fiscal_start_month)
    if kind == "year":
        return f"{year.year}"
    return f"{year.year}-Q{((start.month - fiscal_start_month) % 12) // 3 + 1}"


def _div(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den <= 0:
        return None
    return num / den


def status_of(pace: float | None) -> str | None:
    if pace is None:
        return None
    if pace >= AHEAD:
        return "ahead"
    return "on_track" if pace >= BEHIND else "behind"


def evaluate(
    target: Target,
    today: date,
    windows: Mapping[str, Mapping[str, Any]],
    weighted_pipeline: float,
    fiscal_start_month: int = 1,
) -> dict[str, Any] | None:
    """The target's figures at T (T's local day ``today``), or None when its period does not
    contain T. ``windows``: the document's windows (at least the period's to-date window)."""
    period = parse_period(target.period, fiscal_start_month)
    if not period.start <= today < period.end:
        return None
    window = windows[TO_DATE_WINDOW[period.kind]]
    if target.scope == "total":
        row: Mapping[str, Any] | None = window["total"]
    else:
        dim, _, value = target.scope.partition(":")
        row = window[f"by_{dim}"].get(value)
    actual = row[target.kpi] if row is not None else (0.0 if target.kpi in MONEY_TARGETS else 0)
    elapsed = period_elapsed(today, period.start, period.kind)
    attainment = _div(actual, target.value)
    pace = _div(attainment, elapsed)
    coverage = None
    if target.kpi == "revenue_won" and target.scope == "total":
        coverage = _div(weighted_pipeline, target.value - actual)
    return {
        "kpi": target.kpi,
        "period": target.period,
        "scope": target.scope,
        "target": target.value,
        "actual": actual,
        "attainment": attainment,
        "elapsed": elapsed,
        "pace": pace,
        "projected": _div(actual, elapsed),
        "status": status_of(pace),
        "coverage": coverage,
    }


def needed_windows(targets: Sequence[Target], today: date, fiscal_start_month: int = 1) -> set[str]:
    """To-date windows the targets whose period contains T read."""
    out: set[str] = set()
    for target in targets:
        period = parse_period(target.period, fiscal_start_month)
        if period.start <= today < period.end:
            out.add(TO_DATE_WINDOW[period.kind])
    return out
