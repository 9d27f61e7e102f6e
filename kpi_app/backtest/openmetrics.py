"""The series a backtest samples, and their OpenMetrics text for ``promtool tsdb
create-blocks-from openmetrics``. Pure: no I/O but the file written.

OpenMetrics wants each metric family in one block (families never interleave), a series'
samples in time order, explicit timestamps in seconds and a final ``# EOF``; the whole run is
therefore held in memory and written at the end (a 60-day run at 1h steps: a few hundred
thousand samples).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import IO

LabelSet = tuple[tuple[str, str], ...]


@dataclass
class SeriesBook:
    """Samples per family and label set, in the order they were added (ascending time)."""

    families: dict[str, dict[LabelSet, list[tuple[int, float]]]] = field(default_factory=dict)

    def add(
        self, family: str, label_names: Sequence[str], rows: Iterable[tuple[Sequence[str], float]], t_ms: int
    ) -> None:
        series = self.families.setdefault(family, {})
        for values, value in rows:
            key = tuple(zip(label_names, values, strict=True))
            series.setdefault(key, []).append((t_ms, value))

    @property
    def samples(self) -> int:
        return sum(len(points) for series in self.families.values() for points in series.values())


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _seconds(t_ms: int) -> str:
    whole, ms = divmod(t_ms, 1000)
    return str(whole) if ms == 0 else f"{whole}.{ms:03d}"


def write_openmetrics(book: SeriesBook, out: IO[str]) -> None:
    """Every sample of ``book`` as gauges, families and label sets in sorted order."""
    for family in sorted(book.families):
        out.write(f"# TYPE {family} gauge\n")
        for labels, points in sorted(book.families[family].items()):
            pairs = ",".join(f'{name}="{_escape(value)}"' for name, value in labels)
            head = f"{family}{{{pairs}}} " if pairs else f"{family} "
            out.writelines(f"{head}{_number(v)} {_seconds(t)}\n" for t, v in points)
    out.write("# EOF\n")
