"""The section-5 document: every window, every dimension and ``current``, read from buckets.

One read is one read-only script call that sums the buckets inside Redis (60 minute +
24 hour + 90 day buckets, the lifetime totals and the current state, the calendar windows'
day and month buckets, or only those of the windows asked for); windows sharing a
granularity are summed incrementally (7d, then 30d, then 90d over the same day buckets;
today, mtd, qtd, ytd over T's month's days then the fiscal year's earlier months). The
write-time dimension cap bounds the fields of every bucket, so a read's Redis time is bounded
whatever the input.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from kpi_state import keys, kpis
from kpi_state.kpis import DIM_CODES, DIM_KEYS, DIMENSIONS, Current, Dim
from kpi_state.periods import CALENDAR_WINDOWS, calendar_groups
from kpi_state.settings import Settings
from kpi_state.store import KpiStore
from kpi_state.targets import Target, evaluate, needed_windows
from kpi_state.targets_store import TargetStore
from kpi_state.windows import WINDOWS, BucketClock, Window

Counters = dict[str, int]


def split_counters(fields: Mapping[str, int]) -> tuple[Counters, dict[Dim, dict[str, Counters]]]:
    """Bucket fields -> (total counters, {dim: {value: counters}})."""
    total: Counters = {}
    dims: dict[Dim, dict[str, Counters]] = {dim: {} for dim in DIMENSIONS}
    # By code: a scrape runs this over every field of every window (tens of thousands), where a
    # call of keys.split_field per field cost ~30% more. The layout is still keys.FIELD_SEP's.
    by_code = {code: dims[dim] for code, dim in DIM_CODES.items()}
    sep = keys.FIELD_SEP
    for name, value in fields.items():
        if sep not in name:
            total[name] = value
            continue
        code, dim_code, dim_value = name.split(sep, 2)
        per_value = by_code[dim_code].get(dim_value)
        if per_value is None:
            per_value = by_code[dim_code][dim_value] = {}
        per_value[code] = value
    return total, dims


def current_of(current_doc: Mapping[str, Any]) -> Current:
    """What the ratios of a window need from the ``current`` part of the document."""
    return Current(
        active_customers=current_doc["active_customers"], open_deals=current_doc["pipeline"]["open_deals"]
    )


def format_instant(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


class KpiReader:
    """Assembles the document for any ``as_of`` from the store's raw buckets."""

    def __init__(self, store: KpiStore, settings: Settings) -> None:
        self._store = store
        self.targets = TargetStore(store)
        self._clock = BucketClock(settings.tz)
        self._tz = settings.tz
        self._fiscal_start = settings.fiscal_year_start_month
        self._stages = settings.stage_names
        self._probabilities = {s.name: s.probability for s in settings.stage_list}
        self._currency = settings.currency

    async def window_fields(
        self, as_of: datetime, windows: Iterable[str] | None = None
    ) -> tuple[dict[str, Counters], Counters]:
        """Summed bucket fields per window name (every window, or only ``windows``), and the
        current-state hash.

        Windows of one granularity are nested (bucket lists newest first, each a prefix
        of the longest), so each granularity is one group whose cuts are the windows'
        lengths; Redis sums them in one script call, reading only the buckets of the
        windows asked for.
        """
        wanted = None if windows is None else set(windows)
        by_granularity: dict[str, list[Window]] = {}
        for window in WINDOWS:
            if wanted is None or window.name in wanted:
                by_granularity.setdefault(window.granularity or "all", []).append(window)
        groups: list[tuple[list[str], list[int], int]] = []
        order: list[str] = []
        for gran, nested in by_granularity.items():
            if gran == "all":
                groups.append(([keys.ALL], [1], 0))
            else:
                longest = max(nested, key=lambda w: w.buckets)
                starts = self._clock.window_buckets(longest, as_of)
                names = [keys.bucket_name(gran, start) for start in starts]
                groups.append((names, [w.buckets for w in nested], 0))
            order.extend(w.name for w in nested)
        calendar = set(CALENDAR_WINDOWS) if wanted is None else wanted & set(CALENDAR_WINDOWS)
        today = as_of.astimezone(self._tz).date()
        for group in calendar_groups(calendar, today, self._fiscal_start):
            names = [keys.bucket_name(kind, self._clock.local_midnight(day)) for kind, day in group.keys]
            groups.append((names, [cut for _, cut in group.cuts], group.minus))
            order.extend(name for name, _ in group.cuts)
        groups.append(([keys.CURRENT], [1], 0))
        sums = await self._store.sum_windows(groups)
        return dict(zip(order, sums[:-1], strict=True)), sums[-1]

    def current(self, cur: Mapping[str, int]) -> dict[str, Any]:
        by_stage: dict[str, dict[str, Any]] = {}
        open_deals = 0
        value = 0
        weighted = 0.0
        for stage in self._stages:
            n = cur.get(keys.open_deals_field(stage), 0)
            v = cur.get(keys.pipeline_value_field(stage), 0)
            open_deals += n
            value += v
            weighted += kpis.money(v) * self._probabilities[stage]
            by_stage[stage] = {"open_deals": n, "value": kpis.money(v)}
        return {
            "active_customers": cur.get(keys.ACTIVE_CUSTOMERS, 0),
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
        for dim in DIMENSIONS:
            doc[DIM_KEYS[dim]] = {
                name: kpis.dimension_kpis(c, dim, self._stages)
                for name, c in sorted(dims[dim].items())
                if kpis.has_contribution(c, dim)
            }
        return doc

    def evaluate_targets(
        self,
        targets: Iterable[Target],
        as_of: datetime,
        windows: Mapping[str, Mapping[str, Any]],
        current_doc: Mapping[str, Any],
    ) -> list[dict[str, Any]]:
        """DESIGN section 4 figures of the targets whose period contains ``as_of`` (in load
        order); ``windows``: window documents holding at least their to-date windows."""
        today = as_of.astimezone(self._tz).date()
        weighted = current_doc["pipeline"]["weighted_value"]
        out = []
        for target in targets:
            figures = evaluate(target, today, windows, weighted, self._fiscal_start)
            if figures is not None:
                out.append(figures)
        return out

    def evaluate_targets_from_fields(
        self,
        targets: Iterable[Target],
        as_of: datetime,
        fields: Mapping[str, Mapping[str, int]],
        current_doc: Mapping[str, Any],
    ) -> list[dict[str, Any]]:
        """``evaluate_targets`` from summed bucket fields (a scrape's snapshot), building the
        window documents of the to-date windows only."""
        current = current_of(current_doc)
        docs = {w: self.window_document(fields[w], current) for w in ("mtd", "qtd", "ytd") if w in fields}
        return self.evaluate_targets(targets, as_of, docs, current_doc)

    async def document(
        self, as_of: datetime | None = None, windows: Iterable[str] | None = None
    ) -> dict[str, Any]:
        as_of = as_of or datetime.now(UTC)
        targets = await self.targets.load()
        asked = None if windows is None else list(windows)
        read = None
        if asked is not None:
            today = as_of.astimezone(self._tz).date()
            read = set(asked) | needed_windows(targets, today, self._fiscal_start)
        per_window, cur = await self.window_fields(as_of, read)
        current_doc = self.current(cur)
        current = current_of(current_doc)
        docs = {name: self.window_document(fields, current) for name, fields in per_window.items()}
        return {
            "as_of": format_instant(as_of),
            "currency": self._currency,
            "windows": {name: doc for name, doc in docs.items() if asked is None or name in asked},
            "targets": self.evaluate_targets(targets, as_of, docs, current_doc),
            "current": current_doc,
        }
