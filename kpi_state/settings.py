"""Settings: environment variables (prefix ``KPI_``) overridden by CLI flags.

Every process builds one ``Settings`` in the composition root and passes it down;
nothing reads the environment anywhere else.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_STAGE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")

DEFAULT_STAGES = "prospecting:0.1,qualification:0.2,proposal:0.5,negotiation:0.8"


class Stage(BaseModel, frozen=True):
    name: str
    probability: float


def parse_stages(raw: str) -> tuple[Stage, ...]:
    """``"prospecting:0.1,proposal:0.5"`` -> ordered stages; ``won`` is implicit and reserved."""
    stages: list[Stage] = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, prob = part.partition(":")
        name = name.strip()
        if not _STAGE_NAME.match(name) or name == "won":
            raise ValueError(f"bad stage name {name!r}: use [A-Za-z0-9_.-], not 'won'")
        p = float(prob) if sep else 0.0
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"stage {name!r}: probability {p} is not within 0..1")
        if any(s.name == name for s in stages):
            raise ValueError(f"stage {name!r} is configured twice")
        stages.append(Stage(name=name, probability=p))
    if not stages:
        raise ValueError("at least one pipeline stage is needed")
    return tuple(stages)


def parse_rates(raw: str) -> dict[str, float]:
    """``"USD=0.92,GBP=1.17"``: units of the reporting currency per one unit of the code."""
    rates: dict[str, float] = {}
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        code, _, value = part.partition("=")
        code = code.strip()
        if not _CURRENCY.match(code):
            raise ValueError(f"bad currency code {code!r}")
        rate = float(value)
        if not rate > 0:
            raise ValueError(f"rate for {code} must be > 0")
        rates[code] = rate
    return rates


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KPI_", extra="ignore", frozen=True)

    redis_url: str = "redis://127.0.0.1:6379/0"
    namespace: str = Field(default="kpi", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    kafka_url: str | None = None
    topic: str = "crm-events"
    topic_partitions: int = Field(default=8, ge=1, le=256)
    dlq_partitions: int = Field(default=1, ge=1, le=256)
    consumer_group: str = "kpi-workers"

    timezone: str = "UTC"
    # First month of the fiscal year (fiscal quarters are its three-month blocks); applied
    # when windows are read, so changing it needs no replay.
    fiscal_year_start_month: int = Field(default=1, ge=1, le=12)
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")
    currency_rates: Annotated[str, NoDecode] = ""
    stages: Annotated[str, NoDecode] = DEFAULT_STAGES
    default_gross_margin: float = Field(default=1.0, ge=0.0, le=1.0)
    max_future_skew_seconds: int = Field(default=3600, ge=0)

    dedupe_ttl_seconds: int = Field(default=7 * 86400, ge=60)
    entity_retention_seconds: int = Field(default=400 * 86400, ge=86400)
    # How long buckets of each granularity are kept past their window, in event time
    # (measured against the newest event seen), before they stop receiving writes and expire.
    minute_bucket_margin_seconds: int = Field(default=3600, ge=0)
    hour_bucket_margin_seconds: int = Field(default=86400, ge=0)
    day_bucket_margin_seconds: int = Field(default=10 * 86400, ge=0)  # also for month buckets
    # Processing time a bucket outlives its event-time retention, so a historical or
    # shuffled replay can be read at any --as-of for that long.
    bucket_grace_seconds: int = Field(default=6 * 3600, ge=60)

    label_cap: int = Field(default=100, ge=1)
    # Distinct values per dimension (rep, source, segment) the store admits, at write time;
    # later values count as "other". Bounds state size and read time whatever the input.
    dimension_cap: int = Field(default=300, ge=1, le=100_000)
    batch_size: int = Field(default=500, ge=1, le=10_000)
    message_batch: int = Field(default=100, ge=1, le=10_000)

    ingest_tokens: Annotated[str, NoDecode] = ""
    ingest_hmac_secret: str = ""
    ingest_max_body_bytes: int = Field(default=1_048_576, ge=1024)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _parse_lists(self) -> Settings:
        parse_stages(self.stages)
        parse_rates(self.currency_rates)
        return self

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def stage_list(self) -> tuple[Stage, ...]:
        return parse_stages(self.stages)

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stage_list)

    @property
    def rates(self) -> dict[str, float]:
        return parse_rates(self.currency_rates)

    @property
    def max_future_skew(self) -> timedelta:
        return timedelta(seconds=self.max_future_skew_seconds)

    @property
    def tokens(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.ingest_tokens.split(",") if t.strip())

    @property
    def dlq_topic(self) -> str:
        return f"{self.topic}.dlq"

    # HTTP hardening
    # Events in one POST /events body; more is 413 ``too_many_events`` before any validation.
    ingest_max_events: int = Field(default=1000, ge=1, le=1_000_000)
    # Rejections an ingest answer lists one by one; the rest are only counted by reason.
    ingest_rejections_listed: int = Field(default=20, ge=0, le=1000)
    # Threads that parse and validate ingest bodies, off the event loop (others wait their turn).
    ingest_validation_threads: int = Field(default=2, ge=1, le=64)
    # Token bucket per ingest credential (each bearer token; the HMAC secret): requests per
    # second and burst. 0 requests per second: no limit.
    ingest_rate_per_second: float = Field(default=50.0, ge=0.0)
    ingest_rate_burst: int = Field(default=100, ge=1)
    # A signed request's X-Signature-Timestamp may be this far from the server's clock.
    ingest_signature_tolerance_seconds: int = Field(default=300, ge=1, le=3600)
    # Longest wait for the broker to acknowledge an ingest publish before answering 503.
    ingest_publish_timeout_seconds: float = Field(default=5.0, gt=0.0, le=120.0)
    # Bearer tokens for the read side (GET /api/kpis, /metrics, the wall page) and keys for
    # wall screens (?key= on the wall page and its /api/kpis calls). Both empty: reads are open.
    read_tokens: Annotated[str, NoDecode] = ""
    view_keys: Annotated[str, NoDecode] = ""

    # CRM connectors (docs/connectors.md). Raw webhook payloads go to ``hooks_topic`` first;
    # `kpi hooks-worker` translates them into ``topic``.
    hooks_topic: str = "crm-hooks"
    hooks_partitions: int = Field(default=4, ge=1, le=256)
    hubspot_app_secret: str = ""
    hubspot_stages: Annotated[str, NoDecode] = ""  # <dealstage id>=<stage>|won|lost,...
    hubspot_owners: Annotated[str, NoDecode] = ""  # <owner id>=<rep>,...
    # The public URL HubSpot calls (scheme://host[:port]), when a proxy changes what we see.
    hubspot_public_url: str = ""
    pipedrive_auth: str = ""  # user:password of HTTP Basic
    pipedrive_stages: Annotated[str, NoDecode] = ""  # <stage_id>=<stage>,...
    pipedrive_owners: Annotated[str, NoDecode] = ""  # <user id>=<rep>,...

    # Alertmanager's base URL (e.g. http://alertmanager:9093): the wall page then shows the
    # firing sales alerts (area="sales") as a banner, through GET /api/alerts. Empty: no banner.
    alertmanager_url: str = Field(default="", pattern=r"^(https?://\S+)?$")

    @property
    def read_token_list(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.read_tokens.split(",") if t.strip())

    @property
    def view_key_list(self) -> tuple[str, ...]:
        return tuple(k.strip() for k in self.view_keys.split(",") if k.strip())
