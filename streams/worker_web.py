"""The worker's web pages (on faust's web server, ``--web-port``) and the state they report.

- ``/healthz``: 200 ``{"status": "ready", ...}`` once partitions are assigned and Redis answers;
  503 before (``starting``), while Redis is unusable (``degraded``) and while stopping.
- ``/metrics``: the process's ``kpi_*`` metrics and the ``sales_*`` KPI gauges read from Redis,
  rendered on a loop of their own (``streams.scrape_thread``) so that a scrape never stalls
  consuming; only ``kpi_*`` while Redis is down.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import faust
import structlog
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from redis.exceptions import RedisError

from kpi_state.settings import Settings
from streams.scrape_thread import ScrapeThread

log = structlog.get_logger(__name__)


@dataclass
class WorkerState:
    """What the worker knows of itself; the worker changes it, the pages read it."""

    identity: str | None = None  # the topic identity of the current assignment
    assigned: bool = False
    redis_ok: bool = True
    stopping: bool = False
    partitions: list[int] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return self.assigned and self.redis_ok and not self.stopping

    @property
    def status(self) -> str:
        if self.ready:
            return "ready"
        return "stopping" if self.stopping else "starting" if not self.assigned else "degraded"


def add_pages(
    app: faust.App,
    state: WorkerState,
    *,
    settings: Settings,
    registry: CollectorRegistry,
    scrapes: ScrapeThread,
) -> None:
    """Register ``/healthz`` and ``/metrics`` on ``app``."""

    # faust makes a page function the view's method: it needs a plain (view, request) function.
    async def healthz(view: View, request: Request) -> Response:
        body = {
            "status": state.status,
            "partitions": state.partitions,
            "topic_id": state.identity,
            "redis": state.redis_ok,
        }
        return view.json(body, status=200 if state.ready else 503, headers={"Cache-Control": "no-store"})

    async def metrics(view: View, request: Request) -> Response:
        from kpi_state.collector import render_metrics  # the KPI gauges are optional here

        accept = request.headers.get("Accept", "")
        try:
            body, content_type = await scrapes.run(
                lambda reader: render_metrics(reader, settings, (registry,), accept=accept)
            )
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("worker.metrics_without_kpis", error=repr(exc))  # Redis down: kpi_* only
            body, content_type = generate_latest(registry), CONTENT_TYPE_LATEST
        # In the headers: aiohttp refuses a content_type argument with a charset parameter.
        return view.bytes(body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})

    app.page("/healthz", name="healthz")(healthz)
    app.page("/metrics", name="metrics")(metrics)
