"""The one adapter that knows Redis: the apply and sum scripts, and raw reads.

The key layout is kpi_state/keys.py; the facts the apply script reads are built by
kpi_state/facts.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from typing import Any

import msgpack
import orjson
import redis.asyncio as aioredis
import structlog

from kpi_state import events as ev
from kpi_state.events import Rejection
from kpi_state.facts import FactBuilder
from kpi_state.keys import KeyLayout
from kpi_state.kpis import DIMENSIONS
from kpi_state.settings import Settings
from kpi_state.windows import LONGEST_BUCKETS, MONTH_BUCKETS_KEPT, MONTH_NOMINAL_SECONDS, NOMINAL_SECONDS

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


class KpiStore:
    """Atomic batch writes and raw reads of the KPI state in one namespace."""

    def __init__(
        self, client: aioredis.Redis, settings: Settings, parser: ev.EventParser | None = None
    ) -> None:
        self._redis = client
        self.layout = KeyLayout(settings.namespace)
        self.prefix = self.layout.prefix  # ARGV[1] of the apply script
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
            keys.extend(self.layout.key(name) for name in names)
            args.append(len(cuts))
            args.extend(cuts)
            args.append(minus)
        replies = await self._sum_script(keys=keys, args=args)
        return [{_text(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)} for flat in replies]

    async def offsets(self) -> dict[str, int]:
        """The per-partition offset watermarks (streams/offsets.py)."""
        raw = await self._redis.hgetall(self.layout.offsets)
        return {_text(k): int(v) for k, v in raw.items()}

    async def watermarks(self, fields: Iterable[str]) -> dict[str, int | None]:
        """The offset watermarks of ``fields``; None for a field that is not set."""
        names = list(fields)
        if not names:
            return {}
        raw = await self._redis.hmget(self.layout.offsets, names)
        return {f: None if v is None else int(v) for f, v in zip(names, raw, strict=True)}

    async def clear(self) -> int:
        """Delete every key of the namespace (tests, `kpi replay --reset`)."""
        deleted = 0
        batch: list[bytes] = []
        async for key in self._redis.scan_iter(match=self.layout.everything, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += await self._redis.unlink(*batch)
                batch.clear()
        if batch:
            deleted += await self._redis.unlink(*batch)
        return deleted


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
