"""What the webhook translators share: mapping settings, vendor ids and times, results. Pure."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from connectors.csv_mapping import parse_pairs

OUTCOMES = ("won", "lost")


@dataclass(frozen=True)
class StageMap:
    """A vendor's stage ids -> a configured stage, or ``won``/``lost``."""

    targets: dict[str, str]

    @classmethod
    def parse(cls, raw: str, stages: tuple[str, ...], what: str, outcomes: bool = True) -> StageMap:
        targets = parse_pairs(raw, what)
        allowed = (*stages, *OUTCOMES) if outcomes else stages
        for vendor, target in targets.items():
            if target not in allowed:
                raise ValueError(f"{what}: {vendor}={target}: use one of {', '.join(allowed)}")
        return cls(targets)


def owner_map(raw: str, what: str) -> dict[str, str]:
    return parse_pairs(raw, what)


def vendor_id(value: object) -> str | None:
    """Vendors send ids as numbers or strings: one string form (None if absent or unusable)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str) and value.strip() and len(value.strip()) <= 128:
        return value.strip()
    return None


def hashed_id(prefix: str, *parts: object) -> str:
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()
    return f"{prefix}-{digest[:40]}"


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(value: object) -> datetime | None:
    """ISO 8601 (an offset, or UTC when it has none, as Pipedrive's ``2024-01-02 10:00:00``),
    or epoch seconds as a number or a numeric string. None when absent or unusable."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        if isinstance(value, int | float):
            return datetime.fromtimestamp(float(value), UTC)
        if isinstance(value, str) and value.strip():
            text = value.strip()
            if text.replace(".", "", 1).isdigit():
                return datetime.fromtimestamp(float(text), UTC)
            ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
            return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return None


@dataclass
class Translation:
    """What one vendor notification becomes: events, or the reason it cannot become any."""

    events: list[dict[str, Any]] = field(default_factory=list)
    reason: str | None = None  # a dead letter: unmapped_stage, invalid_payload, ...
    field_name: str | None = None
    detail: str = ""

    @classmethod
    def refuse(cls, reason: str, field_name: str | None, detail: str) -> Translation:
        return cls(reason=reason, field_name=field_name, detail=detail)
