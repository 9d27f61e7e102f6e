"""Firing sales alerts for the wall page's banner, read from Alertmanager (DESIGN section 9).

Contract:

- Only with ``KPI_ALERTMANAGER_URL`` set; then ``SalesAlertFeed.current()`` asks
  Alertmanager's API v2 ``GET /api/v2/alerts`` for the active, unsilenced, uninhibited
  alerts labelled ``area="sales"`` (``prometheus/rules/sales_drops.yml``), at most once per
  ``CACHE_SECONDS`` whatever the number of wall screens, each call bounded by
  ``TIMEOUT_SECONDS``.
- Alertmanager is optional for the page: when it does not answer, answers an error or
  something that is not a list of alerts, the banner is empty (``available: false``) and
  the reason is logged; nothing is raised.
- What the page gets is a fixed, small shape (``BannerAlert``), oldest first; label and
  annotation values are text the page writes with ``textContent`` only.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import httpx
import structlog
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

log = structlog.get_logger(__name__)

TIMEOUT_SECONDS = 2.0
CACHE_SECONDS = 10.0
MAX_ALERTS = 20  # a banner, not a list: more than this is cut (the count is still given)
QUERY = {
    "active": "true",
    "silenced": "false",
    "inhibited": "false",
    "filter": 'area="sales"',
}


class _AlertmanagerAlert(BaseModel):
    """The part of an API v2 ``gettableAlert`` the banner uses."""

    model_config = ConfigDict(extra="ignore")

    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: datetime  # Alertmanager's field name


_ALERTS = TypeAdapter(list[_AlertmanagerAlert])


class BannerAlert(BaseModel):
    alertname: str
    severity: str
    scope: str  # the `scope` label: total | source | segment for the drop rules, else as is
    where: str  # "total", "source web", "segment smb", "rep:alice"; ", stage <s>" when labelled
    summary: str
    description: str
    look_at: str
    starts_at: datetime


class Banner(BaseModel):
    enabled: bool  # KPI_ALERTMANAGER_URL is set
    available: bool  # Alertmanager answered (false when it is disabled too)
    total: int = 0  # firing sales alerts, before the cut at MAX_ALERTS
    alerts: list[BannerAlert] = Field(default_factory=list)


def _where(labels: dict[str, str]) -> str:
    scope = labels.get("scope", "")
    if scope in ("source", "segment") and scope in labels:
        place = f"{scope} {labels[scope]}"
    else:  # a drop rule's "total", or SalesTargetBehindPace's target scope ("rep:alice")
        place = scope or "total"
    if "stage" in labels:
        place += f", stage {labels['stage']}"
    return place


def banner_alerts(raw: Any) -> list[BannerAlert]:
    """Alertmanager's answer -> the banner's rows, oldest first. Raises ``ValidationError``."""
    alerts = _ALERTS.validate_python(raw)
    rows = [
        BannerAlert(
            alertname=a.labels.get("alertname", ""),
            severity=a.labels.get("severity", ""),
            scope=a.labels.get("scope", ""),
            where=_where(a.labels),
            summary=a.annotations.get("summary", a.labels.get("alertname", "")),
            description=a.annotations.get("description", ""),
            look_at=a.annotations.get("look_at", ""),
            starts_at=a.startsAt,
        )
        for a in alerts
        if a.labels.get("area") == "sales"  # the filter is Alertmanager's; this keeps the contract
    ]
    return sorted(rows, key=lambda r: (r.starts_at, r.alertname, r.where))


class SalesAlertFeed:
    """Cached reader of Alertmanager; one per app. Creates no connection until asked."""

    def __init__(self, url: str | None) -> None:
        self._url = url.rstrip("/") if url else None
        self._lock = asyncio.Lock()
        self._cached: Banner | None = None
        self._fetched_at = float("-inf")

    async def current(self) -> Banner:
        if self._url is None:
            return Banner(enabled=False, available=False)
        async with self._lock:  # concurrent wall screens share one request
            if self._cached is None or time.monotonic() - self._fetched_at >= CACHE_SECONDS:
                self._cached = await self._fetch(self._url)
                self._fetched_at = time.monotonic()
            return self._cached

    async def _fetch(self, url: str) -> Banner:
        try:
            async with httpx.AsyncClient(timeout=TIMEOUT_SECONDS) as client:
                response = await client.get(f"{url}/api/v2/alerts", params=QUERY)
            response.raise_for_status()
            rows = banner_alerts(response.json())
        except (httpx.HTTPError, ValueError, ValidationError) as exc:
            log.warning("alerts.alertmanager_unavailable", error=repr(exc))
            return Banner(enabled=True, available=False)
        return Banner(enabled=True, available=True, total=len(rows), alerts=rows[:MAX_ALERTS])
