"""The section-5 document: every window, every dimension and ``current``, read from buckets.

One read is one pipelined round trip (60 minute + 24 hour + 90 day buckets, the
lifetime totals and the current state); windows sharing a granularity are summed
incrementally (7d, then 30d, then 90d over the same day buckets).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from kpi_state import kpis
from kpi_state.kpis import DIM_CODES, DIM_KEYS, Current, Dim
from kpi_state.settings import Settings
from kpi_state.store import KpiStore
from kpi_state.windows import WINDOWS, BucketClock, Window

Counters = dict[str, int]
_DIMS: tuple[Dim, ...] = ("rep", "source", "segment")


def split_counters(fields: Mapping[str, int]) -> tuple[Counters, dict[Dim, dict[str, Counters]]]:
    """Bucket fields -> (total counters, {dim: {value: counters}})."""
    total: Counters = {}
    dims: dict[Dim, dict[str, Counters]] = {"rep": {}, "source": {}, "segment": {}}
    for name, value in fields.items():
        code, sep, rest = name.partition("|")
        if not sep:
            total[code] = value
            continue
        dim_code, _, dim_value = rest.partition("|")
        per_value = dims[DIM_CODES[dim_code]].setdefault(dim_value, {})
        per_value[code] = value
    return total, dims


def _add_into(acc: dict[bytes, int], fields: Mapping[bytes, bytes]) -> None:
    get = acc.get
    for k, v in fields.items():
        acc[k] = get(k, 0) + int(v)


def _decoded(fields: Mapping[bytes, int]) -> Counters:
    return {k.decode(): v for k, v in fields.items()}


def format_instant(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


class KpiReader:
    """Assembles the document for any ``as_of`` from the store's raw buckets."""

    def __init__(self, store: KpiStore, settings: Settings) -> None:
        self._store = store
        self._clock = BucketClock(settings.tz)
        self._stages = settings.stage_names
        self._probabilities = {s.name: s.probability for s in settings.stage_list}
        self._currency = settings.currency

    async def window_fields(self, as_of: datetime) -> tuple[dict[str, Counters], dict[str, int]]:
        """Summed bucket fields per window name, and the raw current-state hash."""
        plan: list[tuple[Window, list[str]]] = []
        keys: list[str] = []
        for window in WINDOWS:
            if window.granularity is None:
                names = ["all"]
            else:
                names = [
                    f"{window.granularity}:{start}" for start in self._clock.window_buckets(window, as_of)
                ]
            plan.append((window, names))
            keys.extend(n for n in names if n not in keys)
        keys.append("cur")
        replies = dict(zip(keys, await self._store.read_hashes(keys), strict=True))
        out: dict[str, Counters] = {}
        # Windows of one granularity are nested (newest bucket first), so sum each once.
        running: dict[str, tuple[int, dict[bytes, int]]] = {}
        for window, names in plan:
            gran = window.granularity or "all"
            done, acc = running.get(gran, (0, {}))
            acc = dict(acc)
            for name in names[done:]:
                _add_into(acc, replies[name])
            running[gran] = (len(names), acc)
            out[window.name] = _decoded(acc)
        cur: dict[bytes, int] = {}
        _add_into(cur, replies["cur"])
        return out, _decoded(cur)

    def current(self, cur: Mapping[str, int]) -> dict[str, Any]:
        by_stage: dict[str, dict[str, Any]] = {}
        open_deals = 0
        value = 0
        weighted = 0.0
        for stage in self._stages:
            n = cur.get(f"po|{stage}", 0)
            v = cur.get(f"pv|{stage}", 0)
            open_deals += n
            value += v
            weighted += kpis.money(v) * self._probabilities[stage]
            by_stage[stage] = {"open_deals": n, "value": kpis.money(v)}
        return {
            "active_customers": cur.get("ac", 0),
            "pipeline": {
                "open_deals": open_deals,
                "value": kpis.money(value),
                "weighted_value": weighted,
                "by_stage": by_stage,
            },
        }

    def window_document(self, fields: Mapping[str, int], current: Current) -> dict[str, Any]:
        total, dims = split_counters(fields)
        doc: dict[str, Any] = {"total": kpis.total_kpis(total, self._stages, current)}
        for dim in _DIMS:
            doc[DIM_KEYS[dim]] = {
                name: kpis.dimension_kpis(c, dim, self._stages)
                for name, c in sorted(dims[dim].items())
                if kpis.has_contribution(c, dim)
            }
        return doc

    async def document(
        self, as_of: datetime | None = None, windows: Iterable[str] | None = None
    ) -> dict[str, Any]:
        as_of = as_of or datetime.now(UTC)
        per_window, cur = await self.window_fields(as_of)
        current_doc = self.current(cur)
        current = Current(
            active_customers=current_doc["active_customers"],
            open_deals=current_doc["pipeline"]["open_deals"],
        )
        wanted = set(windows) if windows is not None else None
        return {
            "as_of": format_instant(as_of),
            "currency": self._currency,
            "windows": {
                name: self.window_document(fields, current)
                for name, fields in per_window.items()
                if wanted is None or name in wanted
            },
            "current": current_doc,
        }


def dimension_values(fields: Mapping[str, int]) -> dict[str, set[str]]:
    """Distinct dimension values present in a set of bucket fields (for label capping)."""
    out: dict[str, set[str]] = defaultdict(set)
    for name in fields:
        parts = name.split("|", 2)
        if len(parts) == 3:
            out[DIM_CODES[parts[1]]].add(parts[2])
    return out
