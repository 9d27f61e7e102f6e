"""The HTTP app: CRM webhook ingest, the JSON API and the live wall page.

Routes (every error body is JSON ``{"error": <code>, "message": ..., ...}``):

- ``POST /events``: the ingest, see ``kpi_app.ingest`` (202/401/413/415/422/429/503).
- ``POST /hooks/hubspot``, ``POST /hooks/pipedrive``: CRM webhooks, see ``kpi_app.hooks_web``.
- ``GET /api/kpis?window=&by=&as_of=``: the DESIGN section-5 document, as ``kpi show
  --format json`` (both call ``KpiReader.document``). ``window``: comma-separated
  window names; ``by``: comma-separated ``rep``/``source``/``segment`` (or ``total``
  for none) keeps only those dimension maps; ``as_of``: RFC 3339 with an offset, from
  1970-01-01 up to (not including) 2200-01-01 UTC (default: now). A bad parameter is 400.
- ``PUT /api/targets``: replace every target, see ``kpi_app.targets_api`` (200/401/413/422);
  the evaluated targets are the document's ``targets`` in ``GET /api/kpis``.
- ``GET /api/health`` (alias ``/healthz``, never behind a token): 200 ``{"status": "ok",
  "redis": true}`` when Redis answers, else 503. With ingest on a broker the body also
  carries ``"broker": true|false``; a broker that does not answer makes the status
  ``"degraded"`` but stays 200: the read side still works, and restarting this process
  would not bring the broker back (``POST /events`` answers 503 meanwhile).
- ``GET /api/alerts``: the firing sales alerts for the wall's banner, from Alertmanager
  (``kpi_app.alerts_feed``; ``{"enabled": false, ...}`` without ``KPI_ALERTMANAGER_URL``,
  ``"available": false`` when it does not answer). Same read access as ``/api/kpis``.
- ``GET /metrics``: the Prometheus exposition from ``kpi_state.collector`` (503 without it).
- ``GET /`` (and ``/static/index.html``): the wall page; ``/static/*``: its assets, served
  from ``kpi_app/static`` (no CDN).
- ``/api/kpis`` and ``/metrics`` answer 503 ``redis_unavailable`` when Redis does not.
- Read access: with ``read_tokens`` or ``view_keys`` configured, ``/api/kpis``,
  ``/metrics``, ``/api/alerts`` and the wall page need ``Authorization: Bearer <read token>``;
  a view key (``?key=``) opens the wall page, ``/api/kpis`` and ``/api/alerts`` only.
  Neither configured: open.
- Every answer carries the security headers (CSP, nosniff, no referrer, no framing).
- Anything unexpected is logged and answered 500 JSON; no input crashes the server.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from prometheus_client.registry import Collector
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kpi_app.alerts_feed import SalesAlertFeed
from kpi_app.bootstrap import Runtime
from kpi_app.guards import ReadGuard
from kpi_app.hooks_web import RawPublisher, hook_routes
from kpi_app.ingest import Ingest, error, json_response
from kpi_app.publishing import BrokerProbe, ProducerPublisher, Publisher
from kpi_app.targets_api import targets_handler
from kpi_state.events import EARLIEST_INSTANT, LATEST_INSTANT
from kpi_state.opmetrics import OpMetrics
from kpi_state.windows import WINDOW_NAMES

__all__ = ["BrokerProbe", "ProducerPublisher", "Publisher", "create_app"]

log = structlog.get_logger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
DIMENSIONS = {"rep": "by_rep", "source": "by_source", "segment": "by_segment"}
HEALTH_TIMEOUT_SECONDS = 2.0
# The wall page loads nothing from elsewhere; the browser enforces it.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# On every answer, whatever serves it (a page, an asset, JSON, an error).
SECURITY_HEADERS = (
    (b"content-security-policy", PAGE_CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),  # a view key in the page URL never leaves in a Referer
    (b"x-frame-options", b"DENY"),
)
# as_of outside [1970, 2200) is a mistake, and near year 1 or 9999 the bucket arithmetic
# in a zone west or east of UTC leaves the datetime range.
# Same range as an event's occurred_at: outside it the business-timezone arithmetic overflows.
AS_OF_MIN, AS_OF_MAX = EARLIEST_INSTANT, LATEST_INSTANT
# What a Redis that is down or unreachable raises through redis-py (or the socket under it).
REDIS_DOWN = (RedisError, OSError, TimeoutError)


class _QueryError(ValueError):
    pass


def parse_as_of(raw: str | None) -> datetime | None:
    if raw is None or not raw.strip():
        return None
    try:
        ts = datetime.fromisoformat(raw.strip())
    except ValueError as exc:
        raise _QueryError(f"as_of is not an RFC 3339 timestamp: {raw!r}") from exc
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise _QueryError("as_of needs an offset (e.g. 2026-03-31T23:59:59Z)")
    try:
        in_range = AS_OF_MIN <= ts < AS_OF_MAX
    except OverflowError:
        in_range = False
    if not in_range:
        raise _QueryError("as_of must be from 1970-01-01T00:00:00Z up to 2200-01-01T00:00:00Z")
    return ts


def _names(raw: str | None, allowed: Sequence[str], what: str) -> list[str] | None:
    if raw is None or not raw.strip():
        return None
    names = [n.strip() for n in raw.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise _QueryError(f"unknown {what} {', '.join(unknown)}: use {', '.join(allowed)}")
    return names


def restrict_dimensions(doc: dict[str, Any], keep: Sequence[str]) -> dict[str, Any]:
    """Drop the dimension maps not in ``keep`` (``rep``/``source``/``segment``) from every window."""
    for window in doc["windows"].values():
        for dim, key in DIMENSIONS.items():
            if dim not in keep:
                window.pop(key, None)
    return doc


def create_app(
    runtime: Runtime,
    *,
    publisher: Publisher | None,
    ops: OpMetrics | None = None,
    metrics_include: Iterable[Collector] = (),
    broker_probe: BrokerProbe | None = None,
    hooks_publish: RawPublisher | None = None,
) -> Starlette:
    """The HTTP app. The caller owns ``runtime`` (and closes it); nothing connects here.

    ``ops``: where ingest counts the events it refuses (``kpi_events_rejected_total``);
    ``metrics_include``: extra collectors for ``/metrics`` (the process's ``kpi_*`` registry);
    ``broker_probe``: whether the broker answers, for ``/healthz`` and the ingest's fast 503;
    ``hooks_publish``: stores a raw CRM webhook payload (``/hooks/*``, ``kpi_app.hooks_web``).
    """
    settings = runtime.settings
    guard = ReadGuard(settings.read_token_list, settings.view_key_list)
    ingest = Ingest(runtime, publisher, ops, broker_probe)
    alert_feed = SalesAlertFeed(settings.alertmanager_url or None)

    def refused(request: Request, *, key_ok: bool) -> Response | None:
        if guard.allows(request.headers.get("authorization"), request.query_params.get("key"), key_ok=key_ok):
            return None
        how = "Authorization: Bearer <read token>" + (" or ?key=<view key>" if key_ok else "")
        return error(401, "unauthorized", f"reading KPIs needs {how}")

    def redis_down(exc: Exception, path: str) -> Response:
        log.warning("http.redis_unavailable", path=path, error=repr(exc))
        return error(503, "redis_unavailable", "the KPI store (Redis) does not answer; retry later")

    async def kpis(request: Request) -> Response:
        denied = refused(request, key_ok=True)
        if denied is not None:
            return denied
        q = request.query_params
        try:
            as_of = parse_as_of(q.get("as_of"))
            windows = _names(q.get("window"), WINDOW_NAMES, "window")
            by = _names(q.get("by"), [*DIMENSIONS, "total"], "dimension")
        except _QueryError as exc:
            return error(400, "bad_request", str(exc))
        try:
            doc = await runtime.reader.document(as_of, windows)
        except REDIS_DOWN as exc:
            return redis_down(exc, "/api/kpis")
        if by is not None:
            restrict_dimensions(doc, by)
        return json_response(200, doc, {"Cache-Control": "no-store"})

    async def alerts(request: Request) -> Response:
        denied = refused(request, key_ok=True)
        if denied is not None:
            return denied
        banner = await alert_feed.current()
        return json_response(200, banner.model_dump(mode="json"), {"Cache-Control": "no-store"})

    async def health(request: Request) -> Response:
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_SECONDS):
                ok = bool(await runtime.redis.ping())
        except Exception as exc:
            log.warning("health.redis_down", error=repr(exc))
            ok = False
        body: dict[str, Any] = {"status": "ok" if ok else "unavailable", "redis": ok}
        broker = await ingest.broker_up()
        if broker is not None:
            body["broker"] = broker
            if ok and not broker:
                body["status"] = "degraded"
        return json_response(200 if ok else 503, body, {"Cache-Control": "no-store"})

    # ---- /metrics hook: the one place that wires the Prometheus collector in. ----
    # kpi_state.collector.render_metrics(reader, settings, include, accept) -> (body, content type);
    # 503 until the collector module provides it. Looked up per scrape, so a broken or
    # missing collector never stops the ingest and the API from starting.
    async def metrics(request: Request) -> Response:
        denied = refused(request, key_ok=False)
        if denied is not None:
            return denied
        try:
            collector = importlib.import_module("kpi_state.collector")
        except ModuleNotFoundError as exc:
            if exc.name != "kpi_state.collector":
                raise
            collector = None
        render = getattr(collector, "render_metrics", None)
        if render is None:
            return error(503, "metrics_unavailable", "the Prometheus collector is not installed")
        try:
            body, content_type = await render(
                runtime.reader, settings, tuple(metrics_include), accept=request.headers.get("accept", "")
            )
        except REDIS_DOWN as exc:
            return redis_down(exc, "/metrics")
        return Response(body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})

    async def wall(request: Request) -> Response:
        denied = refused(request, key_ok=True)
        if denied is not None:
            return denied
        page, html = STATIC_DIR / "index.html", "text/html; charset=utf-8"
        return FileResponse(page, media_type=html, headers={"Cache-Control": "no-cache"})

    routes = [
        Route("/events", ingest.handle, methods=["POST"]),
        *hook_routes(settings, hooks_publish),
        Route("/api/kpis", kpis, methods=["GET"]),
        Route("/api/alerts", alerts, methods=["GET"]),
        Route("/api/targets", targets_handler(runtime), methods=["PUT"]),
        Route("/api/health", health, methods=["GET"]),
        Route("/healthz", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/", wall, methods=["GET"]),
        # The page itself, reachable under /static too: same access rule as "/".
        Route("/static/index.html", wall, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeaders), Middleware(CatchAll)],
        exception_handlers={HTTPException: _http_error},
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    code = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
    response = error(status, code, str(detail))
    if isinstance(exc, HTTPException) and exc.headers:
        response.headers.update(exc.headers)
    return response


class SecurityHeaders:
    """Adds ``SECURITY_HEADERS`` to every HTTP answer that does not set them itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in SECURITY_HEADERS if name not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


class CatchAll:
    """No input crashes the server: an unhandled exception is logged and answered 500 JSON."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            log.exception("http.unhandled_error", method=scope.get("method"), path=scope.get("path"))
            if not started:
                response = error(500, "internal_error", "unexpected server error (logged)")
                await response(scope, receive, send)
