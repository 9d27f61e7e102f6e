"""The Redis key layout and hash field names: the one module that formats them.

Every key lives under the namespace prefix ``<ns>:``; a *name* is a key without that prefix
(``KpiStore.sum_windows`` takes names). Python code asks ``KeyLayout`` for a key, a name, a
``SCAN`` pattern or a field name and never formats one itself (tests/unit/test_keys.py
checks the source tree for that).

Keys (``<ns>:`` omitted):

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
  ``offsets``: per-partition Kafka offset watermarks (fields: streams.offsets.watermark_field).
- ``targets``: the target set as one JSON list (kpi_state/targets_store.py).
- ``hs:D:<deal>``: HubSpot deal state of the webhook translator (streams/hooks_translator.py).
- ``pin:<token>``: never written; WATCHed by streams.offsets.PinnedRedis.

Counter codes (``ld``, ``e:<stage>``, ...) are KPI definitions and live in kpi_state/kpis.py.

Lua scripts that build keys and fields from the prefix they receive (ARGV[1] of apply.lua) and
so depend on this layout, literal for literal (tests/unit/test_keys.py checks the literals):

- lua/apply.lua: ``all``, ``cur``, ``offsets``, ``wm``, ``L:``, ``D:``, ``C:``, ``seen:``, the
  bucket kinds ``m:``/``h:``/``d:``/``mo:``, and the ``<counter>|<dim>|<value>`` fields;
- lua/apply_records.lua: the ``cur`` fields ``po|``, ``pv|``, ``ac``;
- lua/apply_dimensions.lua: ``dv:<dim>``.

lua/sum_windows.lua only reads the keys it is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal

BucketKind = Literal["m", "h", "d", "mo"]
EntityKind = Literal["L", "D", "C"]

SEP: Final = ":"  # between the namespace, a key kind and an id
FIELD_SEP: Final = "|"  # between the parts of a hash field name

# Key names without an id.
ALL: Final = "all"
CURRENT: Final = "cur"
OFFSETS: Final = "offsets"
WATERMARK: Final = "wm"
TARGETS: Final = "targets"

# Prefixes of key names with an id.
BUCKET_KINDS: Final[tuple[BucketKind, ...]] = ("m", "h", "d", "mo")
ENTITY_KINDS: Final[tuple[EntityKind, ...]] = ("L", "D", "C")
SEEN: Final = "seen"
DIMENSION_VALUES: Final = "dv"
HUBSPOT_DEAL: Final = "hs:D"
PIN: Final = "pin"

# Fields of the ``cur`` hash.
ACTIVE_CUSTOMERS: Final = "ac"
OPEN_DEALS: Final = "po"
PIPELINE_VALUE: Final = "pv"

# Dimension codes of bucket fields and of the ``dv:`` sets.
DIMENSION_CODES: Final[Mapping[str, str]] = {"rep": "r", "source": "s", "segment": "g"}


def bucket_name(kind: str, start: int | str) -> str:
    """``m:<start>`` etc.: the name (no prefix) of a bucket hash; ``kind`` one of BUCKET_KINDS."""
    return f"{kind}{SEP}{start}"


def dimension_field(counter: str, dim_code: str, value: str) -> str:
    """``<counter>|<r|s|g>|<value>``: a counter of one dimension value in a bucket hash."""
    return f"{counter}{FIELD_SEP}{dim_code}{FIELD_SEP}{value}"


def split_field(name: str) -> tuple[str, str, str] | None:
    """``(counter, dim code, value)`` of a dimension field; None for a total counter."""
    parts = name.split(FIELD_SEP, 2)
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else None


def open_deals_field(stage: str) -> str:
    return f"{OPEN_DEALS}{FIELD_SEP}{stage}"


def pipeline_value_field(stage: str) -> str:
    return f"{PIPELINE_VALUE}{FIELD_SEP}{stage}"


class KeyLayout:
    """Full keys of one namespace."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.prefix = f"{namespace}{SEP}"  # ARGV[1] of lua/apply.lua

    def key(self, name: str) -> str:
        """The key of a name (see ``bucket_name``, ALL, CURRENT, ...)."""
        return self.prefix + name

    @property
    def everything(self) -> str:
        """``SCAN`` pattern of every key of the namespace."""
        return self.prefix + "*"

    @property
    def all(self) -> str:
        return self.prefix + ALL

    @property
    def current(self) -> str:
        return self.prefix + CURRENT

    @property
    def offsets(self) -> str:
        return self.prefix + OFFSETS

    @property
    def watermark(self) -> str:
        return self.prefix + WATERMARK

    @property
    def targets(self) -> str:
        return self.prefix + TARGETS

    def bucket(self, kind: str, start: int | str) -> str:
        return self.prefix + bucket_name(kind, start)

    def bucket_pattern(self, kind: str) -> str:
        return f"{self.prefix}{kind}{SEP}*"

    def entity(self, kind: EntityKind, entity_id: str) -> str:
        return f"{self.prefix}{kind}{SEP}{entity_id}"

    def entity_pattern(self, kind: EntityKind) -> str:
        return f"{self.prefix}{kind}{SEP}*"

    def seen(self, event_id: str) -> str:
        return f"{self.prefix}{SEEN}{SEP}{event_id}"

    @property
    def seen_pattern(self) -> str:
        return f"{self.prefix}{SEEN}{SEP}*"

    def dimension_values(self, dim_code: str) -> str:
        return f"{self.prefix}{DIMENSION_VALUES}{SEP}{dim_code}"

    def hubspot_deal(self, deal_id: str) -> str:
        return f"{self.prefix}{HUBSPOT_DEAL}{SEP}{deal_id}"

    def pin(self, token: str) -> str:
        return f"{self.prefix}{PIN}{SEP}{token}"
