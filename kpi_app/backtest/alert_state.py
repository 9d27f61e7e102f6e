"""An alerting rule's states over a run of evaluations, as Prometheus computes them. Pure.

Prometheus (rules/alerting.go, ``AlertingRule.Eval``) at each evaluation time ``t``:

- a label set in the expression's result that has no alert, or only a resolved one, starts a
  new alert: pending, ``activeAt = t``;
- an alert whose label set is missing from the result: a pending one is dropped; a firing one
  resolves at ``t``, unless ``keep_firing_for`` is set and ``t`` is less than that after the
  first evaluation it went missing at (``keepFiringSince``), while it keeps firing;
- then every pending alert with ``t - activeAt >= for`` fires at ``t`` (with ``for: 0`` in the
  same evaluation that made it active).

``firing_intervals`` replays that over the evaluation times of a backtest. An interval is
``(fired_at, resolved_at)``, ``resolved_at`` None when it still fires at the last evaluation.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

Interval = tuple[int, int | None]
K = TypeVar("K", bound=Hashable)


@dataclass
class _Alert:
    active_at: int
    firing: bool = False
    fired_at: int = 0
    keep_since: int | None = None


def firing_intervals(
    times: Sequence[int],
    active: Mapping[int, Iterable[K]],
    hold: int,
    keep_firing_for: int = 0,
) -> dict[K, list[Interval]]:
    """Firing intervals per label set. ``times``: the evaluation times, ascending (any unit);
    ``active[t]``: the label sets in the expression's result at ``t`` (missing: none);
    ``hold``, ``keep_firing_for``: the rule's ``for`` and ``keep_firing_for`` in that unit."""
    alerts: dict[K, _Alert] = {}
    out: dict[K, list[Interval]] = {}
    for t in times:
        present = set(active.get(t, ()))
        for key in present:
            alert = alerts.get(key)
            if alert is None:
                alerts[key] = _Alert(active_at=t)
            else:
                alert.keep_since = None
        for key in [k for k in alerts if k not in present]:
            alert = alerts[key]
            if alert.firing and keep_firing_for > 0:
                if alert.keep_since is None:
                    alert.keep_since = t
                if t - alert.keep_since < keep_firing_for:
                    continue
            if alert.firing:
                out.setdefault(key, []).append((alert.fired_at, t))
            del alerts[key]
        for alert in alerts.values():
            if not alert.firing and t - alert.active_at >= hold:
                alert.firing, alert.fired_at = True, t
    for key, alert in alerts.items():
        if alert.firing:
            out.setdefault(key, []).append((alert.fired_at, None))
    return out
