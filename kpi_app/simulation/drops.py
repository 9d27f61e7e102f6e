"""Injected rate drops: the known change an alert backtest must find (DESIGN section 9).

A ``RateDrop`` multiplies one decision probability of the simulator by ``1 - size`` for the
entities in its scope (one ``source``, one ``segment``, or all) whose decision takes effect
at or after ``start``:

- ``qualification``: P(lead.qualified) of a lead, so the qualification rate falls to
  ``1 - size`` of normal for leads created from about ``start`` on;
- ``stage``: every advance to the next configured stage (a deal that fails it is lost);
- ``win``: the last step, last stage -> won;
- ``conversion``: lead -> customer, applied where a qualified lead becomes a deal, so the
  conversion falls to ``1 - size`` of normal while the qualification rate stays as it was
  (combine it with ``qualification`` for a channel that dries up at both ends).

Drops only scale a probability already drawn against: they draw no random numbers, so a
history with drops differs from the same seed's history without them only in the decisions
the drops change, and with no drop (or ``DropSet.factor`` of 1.0) it is byte-identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, get_args

from kpi_app.simulation.model import SEGMENTS, SOURCES, ms_ceil

DropRate = Literal["qualification", "stage", "win", "conversion"]
DROP_RATES: tuple[str, ...] = get_args(DropRate)
SOURCE_NAMES = tuple(s.name for s in SOURCES)
SEGMENT_NAMES = tuple(s.name for s in SEGMENTS)
DROP_SYNTAX = "RATE:SCOPE:SIZE:START, e.g. qualification:source=web:0.7:2026-01-20T00:00:00Z"


@dataclass(frozen=True)
class RateDrop:
    """``rate`` falls to ``1 - size`` of normal from ``start`` on, for ``source`` or ``segment``
    (at most one of them; neither: every lead)."""

    rate: DropRate
    size: float
    start: datetime
    source: str | None = None
    segment: str | None = None

    def __post_init__(self) -> None:
        if self.rate not in DROP_RATES:
            raise ValueError(f"unknown rate {self.rate!r}: one of {', '.join(DROP_RATES)}")
        if not (0 < self.size <= 1 and math.isfinite(self.size)):
            raise ValueError(f"size must be in (0, 1] (0.7: the rate falls to 30%), not {self.size!r}")
        if self.start.tzinfo is None:
            raise ValueError("a drop's start must be timezone-aware")
        if self.source is not None and self.segment is not None:
            raise ValueError("a drop applies to one source or one segment, not both")
        if self.source is not None and self.source not in SOURCE_NAMES:
            raise ValueError(f"unknown source {self.source!r}: one of {', '.join(SOURCE_NAMES)}")
        if self.segment is not None and self.segment not in SEGMENT_NAMES:
            raise ValueError(f"unknown segment {self.segment!r}: one of {', '.join(SEGMENT_NAMES)}")

    @property
    def scope(self) -> str:
        if self.source is not None:
            return f"source={self.source}"
        if self.segment is not None:
            return f"segment={self.segment}"
        return "total"


def parse_drop(text: str) -> RateDrop:
    """``RATE:SCOPE:SIZE:START`` (``SCOPE``: ``total``, ``source=NAME`` or ``segment=NAME``;
    ``START``: RFC 3339 with an offset). ValueError says what is wrong."""
    parts = text.strip().split(":", 3)
    if len(parts) != 4:
        raise ValueError(f"{text!r}: expected {DROP_SYNTAX}")
    rate, scope, size_text, start_text = parts
    source = segment = None
    if scope.startswith("source="):
        source = scope.removeprefix("source=")
    elif scope.startswith("segment="):
        segment = scope.removeprefix("segment=")
    elif scope != "total":
        raise ValueError(f"{text!r}: scope {scope!r} is not total, source=NAME or segment=NAME")
    try:
        size = float(size_text)
    except ValueError:
        raise ValueError(f"{text!r}: size {size_text!r} is not a number") from None
    try:
        start = datetime.fromisoformat(start_text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r}: start {start_text!r} is not an RFC 3339 time") from None
    if start.tzinfo is None:
        raise ValueError(f"{text!r}: start {start_text!r} needs an offset (e.g. Z)")
    if rate not in DROP_RATES:
        raise ValueError(f"{text!r}: rate {rate!r} is not one of {', '.join(DROP_RATES)}")
    return RateDrop(rate=rate, size=size, start=start, source=source, segment=segment)  # type: ignore[arg-type]


class DropSet:
    """The drops of one simulation, looked up per decision. Empty: always a factor of 1.0."""

    def __init__(self, drops: tuple[RateDrop, ...]) -> None:
        self._by_rate: dict[str, list[tuple[int, str | None, str | None, float]]] = {}
        for d in drops:
            self._by_rate.setdefault(d.rate, []).append((ms_ceil(d.start), d.source, d.segment, 1.0 - d.size))

    def __bool__(self) -> bool:
        return bool(self._by_rate)

    def factor(self, rate: str, when_ms: int, source: str, segment: str) -> float:
        """The product of the factors of every drop of ``rate`` that covers a decision of a lead
        from ``source`` in ``segment`` taking effect at ``when_ms``."""
        f = 1.0
        for start, src, seg, keep in self._by_rate.get(rate, ()):
            if when_ms >= start and (src is None or src == source) and (seg is None or seg == segment):
                f *= keep
        return f
