"""The one adapter that knows Redis: key layout, the apply script, and raw reads.

Key layout under the namespace prefix ``<ns>:`` (see lua/apply.lua for writes):

- ``m:<start>``, ``h:<start>``, ``d:<start>``: hash per minute/hour/day bucket, fields
  ``<counter>`` (total) and ``<counter>|<r|s|g>|<value>`` (by rep/source/segment), values
  exact decimal integers of any size; expire after their window plus a margin.
- ``mo:<start>``: the same per calendar month (``start``: local midnight of its 1st), for the
  calendar windows (kpi_state/periods.py); kept for two fiscal years.
- ``all``: the same fields for lifetime totals, never expires.
- ``cur``: not-windowed state: ``ac`` active customers, ``po|<stage>`` open deals,
  ``pv|<stage>`` open pipeline value (micro-units).
- ``L:<lead>``, ``D:<deal>``, ``C:<customer>``: msgpack join state per entity (dimension
  values stored as their labels, see ``dv:``).
- ``dv:r``, ``dv:s``, ``dv:g``: set of the rep / source / segment values admitted by the
  write-time dimension cap (``Settings.dimension_cap``); later values count as ``other``.
- ``seen:<event_id>``: de-duplication marks (TTL); ``wm``: newest event time seen;
  ``offsets``: per-partition Kafka offset watermarks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from typing import Any, ClassVar

import msgpack
import orjson
import redis.asyncio as aioredis
import structlog

from kpi_state import events as ev
from kpi_state.events import Rejection
from kpi_state.kpis import DIMENSIONS, MICROS
from kpi_state.settings import Settings
from kpi_state.windows import (
    LONGEST_BUCKETS,
    MONTH_BUCKETS_KEPT,
    MONTH_NOMINAL_SECONDS,
    NOMINAL_SECONDS,
    BucketClock,
    epoch_micros,
)

log = structlog.get_logger(__name__)


def lua_source(name: str) -> str:
    """A script of kpi_state/lua/."""
    return resources.files("kpi_state").joinpath(f"lua/{name}").read_text(encoding="utf-8")


# Both scripts add counters exactly past 2^53 with the wide integers of wide.lua.
# The parts of the apply script, in the order they are concatenated (see the header of apply.lua).
APPLY_PARTS = (
    "wide.lua",
    "apply.lua",
    "apply_records.lua",
    "apply_dimensions.lua",
    "apply_handlers.lua",
    "apply_run.lua",
)
APPLY_SCRIPT = "".join(lua_source(name) for name in APPLY_PARTS)
SUM_SCRIPT = lua_source("wide.lua") + lua_source("sum_windows.lua")

# Largest amount accepted per event. The scripts need every single contribution below 2^52
# in magnitude (sums of any size stay exact): 1e9 is 1e15 micro-units.
MAX_AMOUNT = 1e9

# The order of the fold counts apply.lua returns.
FOLDED_DIMENSIONS = DIMENSIONS


@dataclass(frozen=True)
class SourcedEvent:
    """An event read from Kafka, with the watermark field of its partition and its offset."""

    event: ev.Event
    watermark_field: str
    offset: int


class Outcome(StrEnum):
    """What became of one event of a batch."""

    APPLIED = "a"
    DUPLICATE = "d"
    REDELIVERED = "r"  # offset at or below its partition's watermark
    CONFLICT = "c"
    REJECTED = "x"  # refused before the script (e.g. amount out of range)


@dataclass
class ApplyResult:
    applied: int = 0
    duplicates: int = 0
    redelivered: int = 0
    # (position in the batch, rejection): conflicts found against the stored state, and
    # amounts the store cannot represent.
    rejected: list[tuple[int, Rejection]] = field(default_factory=list)
    # One outcome per input position.
    outcomes: list[Outcome] = field(default_factory=list)
    # Applied events whose value of a dimension ("rep", "source", "segment") was folded into
    # "other" by the write-time dimension cap.
    folded: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PreparedBatch:
    result: ApplyResult
    positions: list[int]  # input position of each fact
    args: list[bytes | str] | None  # script arguments; None when there is nothing to send


def _micros(amount: float) -> int:
    return round(amount * MICROS)


class FactBuilder:
    """Turns validated events into the compact facts apply.lua reads (bucket ids precomputed,
    money in integer micro-units of the reporting currency, defaults filled in)."""

    def __init__(self, settings: Settings, parser: ev.EventParser | None = None) -> None:
        self._clock = BucketClock(settings.tz)
        self._parser = parser or ev.EventParser(settings)
        self._first_stage = settings.stage_names[0]
        self._margin = settings.default_gross_margin
        self._currency = settings.currency

    def amount_error(self, event: ev.Event) -> Rejection | None:
        if not isinstance(event, ev.MONEY_EVENTS) or event.amount is None:
            return None
        value = self._parser.amount_in_reporting(event.amount, event.currency)
        if not math.isfinite(value) or value > MAX_AMOUNT:
            return Rejection("invalid_amount", "amount", f"amount above the supported maximum {MAX_AMOUNT:g}")
        return None

    def _amount(self, event: ev.MoneyEvent) -> int:
        assert event.amount is not None
        return _micros(self._parser.amount_in_reporting(event.amount, event.currency))

    def _deal_amount(
        self, e: ev.DealCreated | ev.DealStageChanged | ev.DealWon | ev.DealUpdated, f: dict[str, Any]
    ) -> None:
        """A deal's amount statement: ``a`` in reporting micro-units; in another currency also the
        raw micro-units ``ar`` and the rate ``rt``, so a later currency-only statement can
        re-express the same number (apply.lua ``amount_now``)."""
        if e.amount is None:
            return
        f["a"] = self._amount(e)
        if e.currency is not None and e.currency != self._currency:
            f["ar"] = _micros(e.amount)
            f["rt"] = self._parser.amount_in_reporting(1.0, e.currency)

    def fact(self, event: ev.Event) -> dict[str, Any]:
        micros = epoch_micros(event.occurred_at)
        b = self._clock.bucket_ids(event.occurred_at, micros)
        f: dict[str, Any] = {
            "i": event.event_id,
            "y": event.code,
            "t": micros,
            "m": str(b.minute),
            "h": str(b.hour),
            "d": str(b.day),
            "mo": str(b.month),
        }
        self._fields[type(event)](self, event, f)
        return f

    # Type-specific fields, dispatched on the exact class (a match over ten classes costs more
    # per event than the rest of the fact). apply.lua tests flags for truth, so a false flag is
    # left out rather than sent.

    def _lead_created(self, e: ev.LeadCreated, f: dict[str, Any]) -> None:
        f["l"] = e.lead_id
        f["r"] = e.rep_id or "unassigned"
        f["s"] = e.source or "unknown"
        f["g"] = e.segment or "unknown"

    def _lead_qualified(self, e: ev.LeadQualified, f: dict[str, Any]) -> None:
        f["l"] = e.lead_id

    def _deal_created(self, e: ev.DealCreated, f: dict[str, Any]) -> None:
        f["k"] = e.deal_id
        if e.rep_id is not None:
            f["r"] = e.rep_id
        self._deal_amount(e, f)
        f["st"] = e.stage or self._first_stage
        if e.lead_id is not None:
            f["l"] = e.lead_id

    def _deal_stage_changed(self, e: ev.DealStageChanged, f: dict[str, Any]) -> None:
        f["k"] = e.deal_id
        f["st"] = e.to_stage
        if e.rep_id is not None:
            f["r"] = e.rep_id
        self._deal_amount(e, f)

    def _deal_won(self, e: ev.DealWon, f: dict[str, Any]) -> None:
        f["k"] = e.deal_id
        f["c"] = e.customer_id
        f["r"] = e.rep_id
        self._deal_amount(e, f)
        if e.lead_id is not None:
            f["l"] = e.lead_id

    def _deal_lost(self, e: ev.DealLost, f: dict[str, Any]) -> None:
        f["k"] = e.deal_id
        f["r"] = e.rep_id
        if e.lead_id is not None:
            f["l"] = e.lead_id

    def _spend_recorded(self, e: ev.SpendRecorded, f: dict[str, Any]) -> None:
        f["a"] = self._amount(e)
        f["cat"] = e.category
        f["s"] = e.source or "unknown"

    def _revenue_recorded(self, e: ev.RevenueRecorded, f: dict[str, Any]) -> None:
        amount = self._parser.amount_in_reporting(e.amount, e.currency)
        margin = self._margin if e.gross_margin is None else e.gross_margin
        f["c"] = e.customer_id
        f["a"] = _micros(amount)
        f["x"] = _micros(amount * margin)

    def _customer_churned(self, e: ev.CustomerChurned, f: dict[str, Any]) -> None:
        f["c"] = e.customer_id

    def _survey_answered(self, e: ev.SurveyAnswered, f: dict[str, Any]) -> None:
        f["kind"] = e.kind
        if e.kind == "nps":
            if e.score >= 9:
                f["p"] = True
            if e.score <= 6:
                f["q"] = True
        elif e.score >= 4:
            f["p"] = True

    def _lead_updated(self, e: ev.LeadUpdated, f: dict[str, Any]) -> None:
        f["l"] = e.lead_id
        if e.rep_id is not None:
            f["r"] = e.rep_id
        if e.source is not None:
            f["s"] = e.source
        if e.segment is not None:
            f["g"] = e.segment

    def _lead_only(self, e: ev.LeadDeleted | ev.LeadRestored, f: dict[str, Any]) -> None:
        f["l"] = e.lead_id

    def _deal_updated(self, e: ev.DealUpdated, f: dict[str, Any]) -> None:
        f["k"] = e.deal_id
        if e.rep_id is not None:
            f["r"] = e.rep_id
        if e.lead_id is not None:
            f["l"] = e.lead_id
        if e.amount is not None:
            self._deal_amount(e, f)
        elif e.currency is not None:  # the same number, in another currency from now on
            f["cu"] = self._parser.amount_in_reporting(1.0, e.currency)

    def _deal_reopened(self, e: ev.DealReopened, f: dict[str, Any]) -> None:
        f["k"] = e.deal_id
        if e.stage is not None:
            f["st"] = e.stage
        if e.rep_id is not None:
            f["r"] = e.rep_id

    def _deal_only(self, e: ev.DealDeleted | ev.DealRestored, f: dict[str, Any]) -> None:
        f["k"] = e.deal_id

    _fields: ClassVar[dict[type, Callable[[FactBuilder, Any, dict[str, Any]], None]]] = {
        ev.LeadCreated: _lead_created,
        ev.LeadQualified: _lead_qualified,
        ev.DealCreated: _deal_created,
        ev.DealStageChanged: _deal_stage_changed,
        ev.DealWon: _deal_won,
        ev.DealLost: _deal_lost,
        ev.SpendRecorded: _spend_recorded,
        ev.RevenueRecorded: _revenue_recorded,
        ev.CustomerChurned: _customer_churned,
        ev.SurveyAnswered: _survey_answered,
        ev.LeadUpdated: _lead_updated,
        ev.LeadDeleted: _lead_only,
        ev.LeadRestored: _lead_only,
        ev.DealUpdated: _deal_updated,
        ev.DealReopened: _deal_reopened,
        ev.DealDeleted: _deal_only,
        ev.DealRestored: _deal_only,
    }


class KpiStore:
    """Atomic batch writes and raw reads of the KPI state in one namespace."""

    def __init__(
        self, client: aioredis.Redis, settings: Settings, parser: ev.EventParser | None = None
    ) -> None:
        self._redis = client
        self.prefix = f"{settings.namespace}:"
        self._facts = FactBuilder(settings, parser)
        self._script = client.register_script(APPLY_SCRIPT)
        self._sum_script = client.register_script(SUM_SCRIPT)
        keep = {
            "m": settings.minute_bucket_margin_seconds,
            "h": settings.hour_bucket_margin_seconds,
            "d": settings.day_bucket_margin_seconds,
        }
        keep_seconds = {g: LONGEST_BUCKETS[g] * NOMINAL_SECONDS[g] + keep[g] for g in ("m", "h", "d")}
        keep_seconds["mo"] = MONTH_BUCKETS_KEPT * MONTH_NOMINAL_SECONDS + keep["d"]
        self._config = orjson.dumps(
            {
                "keep": keep_seconds,
                "grace": settings.bucket_grace_seconds,
                "dttl": settings.dedupe_ttl_seconds,
                "ettl": settings.entity_retention_seconds,
                "cap": settings.dimension_cap,
            }
        )

    @property
    def redis(self) -> aioredis.Redis:
        return self._redis

    def prepare(
        self,
        events: Sequence[ev.Event | SourcedEvent],
        marks: Mapping[str, int] | None = None,
    ) -> PreparedBatch:
        """The CPU half of an apply: facts for the script, and what the store refuses itself.

        Split from ``execute`` so a caller can prepare the next batch while Redis runs
        the previous one (Redis executes the script on its own core).
        """
        result = ApplyResult(outcomes=[Outcome.REJECTED] * len(events))
        facts: list[dict[str, Any]] = []
        positions: list[int] = []
        newest = 0
        for pos, item in enumerate(events):
            event = item.event if isinstance(item, SourcedEvent) else item
            try:
                problem = self._facts.amount_error(event)
                fact = None if problem is not None else self._facts.fact(event)
            except Exception as exc:  # one event's fault never fails its batch: it is refused
                log.exception("store.unprocessable_event", event_id=event.event_id, error=repr(exc))
                problem, fact = ev.unprocessable(exc), None
            if fact is None:
                assert problem is not None
                result.rejected.append((pos, problem))
                continue
            if isinstance(item, SourcedEvent):
                fact["w"], fact["o"] = item.watermark_field, item.offset
            newest = max(newest, fact["t"] // 1_000_000)
            facts.append(fact)
            positions.append(pos)
        args: list[bytes | str] | None = None
        if facts or marks:
            marks_json = orjson.dumps(dict(marks or {}))
            args = [self.prefix, self._config, msgpack.packb(facts), marks_json, str(newest)]
        return PreparedBatch(result, positions, args)

    async def apply(
        self,
        events: Sequence[ev.Event | SourcedEvent],
        marks: Mapping[str, int] | None = None,
    ) -> ApplyResult:
        """Apply a batch in one atomic script call.

        ``marks`` raise per-partition offset watermarks in the same call, so a batch
        read from Kafka is either applied with its offsets or not at all.
        """
        return await self.execute(self.prepare(events, marks))

    async def execute(self, batch: PreparedBatch) -> ApplyResult:
        """The Redis half of an apply: one script call, atomic."""
        result, positions = batch.result, batch.positions
        if batch.args is None:
            return result
        raw = await self._script(args=batch.args)
        codes = _text(raw[0])
        result.folded = {dim: int(n) for dim, n in zip(FOLDED_DIMENSIONS, raw[1:4], strict=True) if n}
        for pos, code in zip(positions, codes, strict=True):
            outcome = Outcome(code)
            result.outcomes[pos] = outcome
            if outcome is Outcome.APPLIED:
                result.applied += 1
            elif outcome is Outcome.DUPLICATE:
                result.duplicates += 1
            elif outcome is Outcome.REDELIVERED:
                result.redelivered += 1
            else:
                result.rejected.append(
                    (pos, Rejection("conflict", None, "conflicts with a stored fact for this entity"))
                )
        result.rejected.sort(key=lambda item: item[0])
        return result

    async def sum_windows(
        self, groups: Sequence[tuple[Sequence[str], Sequence[int]] | tuple[Sequence[str], Sequence[int], int]]
    ) -> list[dict[str, int]]:
        """Summed bucket hashes, in one read-only script call (lua/sum_windows.lua).

        Each group is (key names without the prefix, newest first; increasing cuts[; minus]):
        the result holds, per cut and in order, the field-wise sum of the group's first
        ``cut`` hashes, where the group's last ``minus`` hashes (only in its last cut) are
        subtracted, and fields that cancel out are left out. Summing in Redis returns a few
        thousand fields instead of the tens of thousands a scrape covers.
        """
        keys: list[str] = []
        args: list[int] = [len(groups)]
        for group in groups:
            names, cuts = group[0], group[1]
            minus = group[2] if len(group) == 3 else 0
            if list(cuts) != sorted(cuts) or not cuts or cuts[-1] != len(names):
                raise ValueError(f"cuts {list(cuts)} must increase up to the group size {len(names)}")
            if minus < 0 or any(cut > len(names) - minus for cut in cuts[:-1]) or minus > len(names):
                raise ValueError(f"the last {minus} keys of a group subtract only in its last cut")
            keys.extend(self.prefix + name for name in names)
            args.append(len(cuts))
            args.extend(cuts)
            args.append(minus)
        replies = await self._sum_script(keys=keys, args=args)
        return [{_text(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)} for flat in replies]

    async def offsets(self) -> dict[str, int]:
        raw = await self._redis.hgetall(self.prefix + "offsets")
        return {_text(k): int(v) for k, v in raw.items()}

    async def clear(self) -> int:
        """Delete every key of the namespace (tests, `kpi replay --reset`)."""
        deleted = 0
        batch: list[bytes] = []
        async for key in self._redis.scan_iter(match=self.prefix + "*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += await self._redis.unlink(*batch)
                batch.clear()
        if batch:
            deleted += await self._redis.unlink(*batch)
        return deleted


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
