"""The one adapter that knows Redis: key layout, the apply script, and raw reads.

Key layout under the namespace prefix ``<ns>:`` (see lua/apply.lua for writes):

- ``m:<start>``, ``h:<start>``, ``d:<start>``: hash per minute/hour/day bucket, fields
  ``<counter>`` (total) and ``<counter>|<r|s|g>|<value>`` (by rep/source/segment);
  expire after their window plus a margin.
- ``all``: the same fields for lifetime totals, never expires.
- ``cur``: not-windowed state: ``ac`` active customers, ``po|<stage>`` open deals,
  ``pv|<stage>`` open pipeline value (micro-units).
- ``L:<lead>``, ``D:<deal>``, ``C:<customer>``: msgpack join state per entity.
- ``seen:<event_id>``: de-duplication marks (TTL); ``wm``: newest event time seen;
  ``offsets``: per-partition Kafka offset watermarks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from typing import Any

import msgpack
import orjson
import redis.asyncio as aioredis

from kpi_state import events as ev
from kpi_state.events import Rejection
from kpi_state.kpis import MICROS
from kpi_state.settings import Settings
from kpi_state.windows import LONGEST_BUCKETS, NOMINAL_SECONDS, BucketClock, epoch_micros

APPLY_SCRIPT = resources.files("kpi_state").joinpath("lua/apply.lua").read_text(encoding="utf-8")
SUM_SCRIPT = resources.files("kpi_state").joinpath("lua/sum_windows.lua").read_text(encoding="utf-8")

# Largest amount accepted per event: micro-units must stay exact in Lua's doubles (2^53).
MAX_AMOUNT = 1e9

_TYPE_CODES = {
    "lead.created": "LC",
    "lead.qualified": "LQ",
    "deal.created": "DC",
    "deal.stage_changed": "DS",
    "deal.won": "DW",
    "deal.lost": "DL",
    "spend.recorded": "SP",
    "revenue.recorded": "RR",
    "customer.churned": "CH",
    "survey.answered": "SV",
}


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

    def __init__(self, settings: Settings) -> None:
        self._clock = BucketClock(settings.tz)
        self._parser = ev.EventParser(settings)
        self._first_stage = settings.stage_names[0]
        self._margin = settings.default_gross_margin

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

    def fact(self, event: ev.Event) -> dict[str, Any]:
        b = self._clock.bucket_ids(event.occurred_at)
        f: dict[str, Any] = {
            "i": event.event_id,
            "y": _TYPE_CODES[event.type],
            "t": epoch_micros(event.occurred_at),
            "m": str(b.minute),
            "h": str(b.hour),
            "d": str(b.day),
        }
        match event:
            case ev.LeadCreated():
                f.update(
                    l=event.lead_id,
                    r=event.rep_id or "unassigned",
                    s=event.source or "unknown",
                    g=event.segment or "unknown",
                )
            case ev.LeadQualified():
                f["l"] = event.lead_id
            case ev.DealCreated():
                f.update(
                    k=event.deal_id,
                    r=event.rep_id,
                    a=self._amount(event),
                    st=event.stage or self._first_stage,
                )
                if event.lead_id is not None:
                    f["l"] = event.lead_id
            case ev.DealStageChanged():
                f.update(k=event.deal_id, st=event.to_stage)
                if event.rep_id is not None:
                    f["r"] = event.rep_id
                if event.amount is not None:
                    f["a"] = self._amount(event)
            case ev.DealWon():
                f.update(k=event.deal_id, c=event.customer_id, r=event.rep_id, a=self._amount(event))
                if event.lead_id is not None:
                    f["l"] = event.lead_id
            case ev.DealLost():
                f.update(k=event.deal_id, r=event.rep_id)
                if event.lead_id is not None:
                    f["l"] = event.lead_id
            case ev.SpendRecorded():
                f.update(a=self._amount(event), cat=event.category, s=event.source or "unknown")
            case ev.RevenueRecorded():
                amount = self._parser.amount_in_reporting(event.amount, event.currency)
                margin = self._margin if event.gross_margin is None else event.gross_margin
                f.update(c=event.customer_id, a=_micros(amount), x=_micros(amount * margin))
            case ev.CustomerChurned():
                f["c"] = event.customer_id
            case ev.SurveyAnswered():
                f["kind"] = event.kind
                if event.kind == "nps":
                    f.update(p=event.score >= 9, q=event.score <= 6)
                else:
                    f["p"] = event.score >= 4
        # apply.lua tests flags for truth; JSON false would be a true Lua value only as cjson.null,
        # so drop false flags to keep "absent" and "false" the same.
        return {k: v for k, v in f.items() if v is not False}


class KpiStore:
    """Atomic batch writes and raw reads of the KPI state in one namespace."""

    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        self._redis = client
        self.prefix = f"{settings.namespace}:"
        self._facts = FactBuilder(settings)
        self._script = client.register_script(APPLY_SCRIPT)
        self._sum_script = client.register_script(SUM_SCRIPT)
        keep = {
            "m": settings.minute_bucket_margin_seconds,
            "h": settings.hour_bucket_margin_seconds,
            "d": settings.day_bucket_margin_seconds,
        }
        self._config = orjson.dumps(
            {
                "keep": {g: LONGEST_BUCKETS[g] * NOMINAL_SECONDS[g] + keep[g] for g in ("m", "h", "d")},
                "grace": settings.bucket_grace_seconds,
                "dttl": settings.dedupe_ttl_seconds,
                "ettl": settings.entity_retention_seconds,
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
            problem = self._facts.amount_error(event)
            if problem is not None:
                result.rejected.append((pos, problem))
                continue
            fact = self._facts.fact(event)
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
        codes = raw.decode() if isinstance(raw, bytes) else str(raw or "")
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
        self, groups: Sequence[tuple[Sequence[str], Sequence[int]]]
    ) -> list[dict[str, int]]:
        """Summed bucket hashes, in one read-only script call (lua/sum_windows.lua).

        Each group is (key names without the prefix, newest first; increasing cuts): the
        result holds, per cut and in order, the field-wise sum of the group's first
        ``cut`` hashes. Summing in Redis returns a few thousand fields instead of the
        tens of thousands a scrape covers.
        """
        keys: list[str] = []
        args: list[int] = [len(groups)]
        for names, cuts in groups:
            if list(cuts) != sorted(cuts) or (cuts and cuts[-1] != len(names)):
                raise ValueError(f"cuts {list(cuts)} must increase up to the group size {len(names)}")
            keys.extend(self.prefix + name for name in names)
            args.append(len(cuts))
            args.extend(cuts)
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
