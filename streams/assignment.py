"""What the worker does with a partition assignment: resume, rewind or restart. Pure: no I/O.

``streams.worker.KpiWorker`` reads the facts in this order and stops reading at the first check
that asks for a restart (each read is I/O the next check needs; reading Redis or the group's
offsets for an identity that is already stale would only delay the restart):

1. the topic identity -> ``check_identity``: a new identity (the log restarted at offset 0) means
   nothing this process knows applies any more;
2. the stored Redis watermarks of the assigned partitions -> ``check_watermarks``: one below what
   this process saw committed means Redis lost writes;
3. the committed Kafka offsets -> ``decide_resume``: a partition whose committed offset is past its
   Redis watermark + 1 is rewound: the worker commits the lower offset for the group and restarts,
   so the next process starts there. Never in this process: messages past the committed offset may
   already be fetched (faust fetches during the assignment callback), and applying one would raise
   the watermark over the very range the rewind is meant to read again. Otherwise the worker
   resumes with the new watermark fields (docs/streaming.md, "Effectively once").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from streams.offsets import WatermarkLedger, rewind_target


@dataclass(frozen=True, slots=True)
class Restart:
    """Stop gracefully; the supervisor starts a new process. ``event`` is the log event."""

    event: str
    details: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Rewind:
    """Commit ``offsets`` (partition -> offset) for the group, then restart there."""

    offsets: dict[int, int]


@dataclass(frozen=True, slots=True)
class Resume:
    """Apply these partitions: ``fields`` (partition -> watermark field) and their stored
    watermarks, the baseline of the process's ``WatermarkLedger``."""

    fields: dict[int, str]
    watermarks: dict[str, int | None]


def check_identity(previous: str | None, identity: str) -> Restart | None:
    """A restart when the topic identity changed since this process's last assignment."""
    if previous is not None and identity != previous:
        return Restart("worker.topic_identity_changed", {"old": previous, "new": identity})
    return None


def check_watermarks(known: Mapping[str, int], stored: Mapping[str, int | None]) -> Restart | None:
    """A restart when Redis holds a watermark below what this process knew (``known`` taken before
    ``stored`` was read: ``WatermarkLedger`` contract)."""
    lost = WatermarkLedger.lost(known, stored)
    return Restart("worker.watermarks_lost", {"lost": lost}) if lost else None


def decide_resume(
    fields: Mapping[int, str], stored: Mapping[str, int | None], committed: Mapping[int, int | None]
) -> Rewind | Resume:
    """Rewind the partitions (of ``fields``) whose committed offset is past Redis, else resume.

    ``committed`` holds the group's committed offset per partition (absent or None: none).
    """
    rewinds = {
        partition: target
        for partition, wm_field in fields.items()
        if (target := rewind_target(stored[wm_field], committed.get(partition))) is not None
    }
    if rewinds:
        return Rewind(rewinds)
    return Resume(dict(fields), {wm_field: stored[wm_field] for wm_field in fields.values()})
