"""What a backtest evaluates, read from Prometheus rule files. Pure: no I/O but reading the files.

Contract:

- An alerting rule is backtested when its expression reads a ``sales_*`` series, directly or
  through recording rules; the others (pipeline health, scrape targets) watch processes a
  replay does not run, and an ``absent()`` among them would fire for the whole run.
- Recording rules are evaluated level by level: level 0 reads only exported series, level k
  reads a record of level k-1 at most. Rules sharing a record name (one per scope) share a
  level. A cycle is refused, as Prometheus would never settle one either.
- ``families`` are the exported ``sales_*`` names the kept rules read, and ``windows`` the
  ``window`` label values they select with ``=`` (None: a matcher other than ``=`` on
  ``window``, or none at all, so every window is kept). Series without a ``window`` label
  (the current-state gauges) are always kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_WINDOW_MATCHER = re.compile(r'\bwindow\s*(=~|!~|!=|=)\s*"([^"]*)"')
_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$")
_OFFSET_OR_RANGE = re.compile(r"\boffset\s+(\d[0-9dhms]*)|\[(\d[0-9dhms]*)(?::[0-9dhms]*)?\]")
_TEMPLATE_LABEL = re.compile(r"\{\{\s*\$labels\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def parse_duration(text: str) -> timedelta:
    """A Prometheus duration such as ``1h30m`` or ``90s`` (no years or weeks)."""
    match = _DURATION.match(text.strip())
    if not text.strip() or match is None:
        raise ValueError(f"not a duration: {text!r} (e.g. 30m, 1h, 2d)")
    d, h, m, s, ms = (int(g) if g else 0 for g in match.groups())
    return timedelta(days=d, hours=h, minutes=m, seconds=s, milliseconds=ms)


class Rule(BaseModel):
    model_config = ConfigDict(extra="ignore")

    record: str | None = None
    alert: str | None = None
    expr: str
    hold: str = Field(default="0s", alias="for")
    keep_firing_for: str = "0s"
    labels: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_kind(self) -> Rule:
        if (self.record is None) == (self.alert is None):
            raise ValueError("a rule has exactly one of record and alert")
        parse_duration(self.hold)
        parse_duration(self.keep_firing_for)
        return self


class Group(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    rules: list[Rule] = Field(default_factory=list)


class RuleFile(BaseModel):
    model_config = ConfigDict(extra="ignore")

    groups: list[Group] = Field(default_factory=list)


def load_rules(paths: list[Path]) -> list[Rule]:
    """Every rule of the files, in file order; a malformed file raises ValueError naming it."""
    rules: list[Rule] = []
    for path in paths:
        try:
            doc = RuleFile.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
        except (yaml.YAMLError, ValueError) as exc:
            raise ValueError(f"{path}: not a Prometheus rule file: {exc}") from exc
        rules.extend(rule for group in doc.groups for rule in group.rules)
    return rules


def identifiers(expr: str) -> set[str]:
    """Metric-like names in a PromQL expression (string literals removed first)."""
    return set(_IDENT.findall(_STRING.sub('""', expr)))


@dataclass(frozen=True)
class Plan:
    alerts: list[Rule]
    levels: list[list[Rule]]  # recording rules, level 0 first
    families: frozenset[str]
    windows: frozenset[str] | None
    skipped: list[str]  # alert names not backtested (they read no sales_* series)


def plan(rules: list[Rule]) -> Plan:
    records: dict[str, list[Rule]] = {}
    for rule in rules:
        if rule.record is not None:
            records.setdefault(rule.record, []).append(rule)
    deps = {
        name: {i for r in group for i in identifiers(r.expr) if i in records}
        for name, group in records.items()
    }
    level: dict[str, int] = {}

    def level_of(name: str, seen: tuple[str, ...] = ()) -> int:
        if name in seen:
            raise ValueError(f"recording rules form a cycle: {' -> '.join((*seen, name))}")
        if name not in level:
            level[name] = 1 + max((level_of(d, (*seen, name)) for d in deps[name]), default=-1)
        return level[name]

    def reads(names: set[str]) -> set[str]:
        """The record names and exported names ``names`` read, transitively."""
        out: set[str] = set()
        todo = list(names)
        while todo:
            name = todo.pop()
            if name in out:
                continue
            out.add(name)
            if name in records:
                todo.extend(i for r in records[name] for i in identifiers(r.expr))
        return out

    alerts, skipped, needed = [], [], set()
    for rule in rules:
        if rule.alert is None:
            continue
        read = reads(identifiers(rule.expr))
        if any(name.startswith("sales_") for name in read):
            alerts.append(rule)
            needed |= read
        else:
            skipped.append(rule.alert)
    kept_records = [name for name in records if name in needed]
    depth = max((level_of(name) for name in kept_records), default=-1)
    levels: list[list[Rule]] = [[] for _ in range(depth + 1)]
    for rule in rules:
        if rule.record in needed:
            levels[level_of(rule.record)].append(rule)
    exprs = [r.expr for r in alerts] + [r.expr for group in levels for r in group]
    windows: set[str] | None = set()
    for expr in exprs:
        for op, value in _WINDOW_MATCHER.findall(expr):
            if op != "=":
                windows = None
                break
            if windows is not None:
                windows.add(value)
    families = frozenset(name for name in needed if name.startswith("sales_"))
    return Plan(
        alerts=alerts,
        levels=levels,
        families=families,
        windows=frozenset(windows) if windows else None,
        skipped=skipped,
    )


def lookback(the_plan: Plan) -> timedelta:
    """How far before an evaluation the rules read: per recording level and for the alerts, the
    longest ``offset`` plus range selector of any of its expressions, summed along the levels (a
    level reading a record ``offset 7d`` reaches back what that record itself reaches, plus 7d).
    An upper bound: a backtest sampling this much history before ``--from`` gives every rule
    the samples a long-running Prometheus would have."""

    def reach(expr: str) -> timedelta:
        spans = [parse_duration(a or b) for a, b in _OFFSET_OR_RANGE.findall(_STRING.sub('""', expr))]
        return max(spans, default=timedelta(0))

    total = timedelta(0)
    for group in [*the_plan.levels, the_plan.alerts]:
        total += max((reach(rule.expr) for rule in group), default=timedelta(0))
    return total


def expand_labels(template: str, labels: dict[str, str]) -> str:
    """A rule label's value for one series: ``{{ $labels.x }}`` is replaced, as Prometheus does
    (other template actions are left as they are; the rules here use none in labels)."""
    return _TEMPLATE_LABEL.sub(lambda m: labels.get(m.group(1), ""), template)
