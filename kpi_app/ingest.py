"""``POST /events``: CRM webhooks and batch senders hand events to the topic.

The body is one event (a JSON object), a batch (a JSON array), or NDJSON
(``application/x-ndjson``, one event per non-blank line) of at most ``ingest_max_events``
events. Each event is validated on its own (``EventParser.parse_object``, plus the store's
amount range), in a worker thread (at most ``ingest_validation_threads`` bodies at a time)
so the event loop keeps answering; the valid ones are handed, as the JSON objects
received, to the ``Publisher`` in chunks of ``message_batch`` (one topic message each).
The worker validates again; ingest never writes KPI state itself. Every answer is JSON;
an error is ``{"error": <code>, "message": ..., ...}``.

====  ==========================================================================
202   ``{"accepted": n, "rejected": [{"index", "field", "reason", "detail"}],
      "rejected_count": m, "rejected_by_reason": {reason: count}}``: ``rejected``
      lists the first ``ingest_rejections_listed`` refusals only (NDJSON items also
      carry ``line``, 1-based; ``detail`` and ``field`` are cut to 200 characters);
      only the valid events published
401   ingest disabled (neither token nor secret configured: never open by default),
      credentials missing, a wrong bearer token, a wrong or stale signature
413   Content-Length, or the body as streamed, above ``ingest_max_body_bytes``
      (``payload_too_large``); more than ``ingest_max_events`` events
      (``too_many_events``, with ``limit`` and ``events``; nothing is validated)
415   content type not ``application/json`` / ``application/x-ndjson`` (or a
      ``charset`` other than UTF-8)
422   the body is not JSON (``error`` and ``reason`` ``invalid_json``), or no event
      is valid (the 202 shape with ``accepted: 0``)
429   the credential's token bucket is empty (``rate_limited``, ``Retry-After``)
503   no publisher (no ``--kafka-url``); publishing failed or took longer than
      ``ingest_publish_timeout_seconds`` (``publish_failed``); the broker was found
      down and still does not answer (``broker_unavailable``). Nothing is reported
      accepted, and a retry is safe (the worker de-duplicates by ``event_id``)
====  ==========================================================================

Authentication: ``Authorization: Bearer <token>``, compared in constant time with
every configured token, or a signature: ``X-Signature-Timestamp: <Unix seconds>`` and
``X-Signature-256: sha256=<hex>``, the HMAC-SHA256 with ``ingest_hmac_secret`` of
``<timestamp>.<raw body>``; a timestamp more than ``ingest_signature_tolerance_seconds``
from the server's clock is refused, so a captured request cannot be replayed later.
A credential for a configured mechanism must be right when present (a wrong one is 401
even if the other is right); a credential for a mechanism not configured is ignored.
Each bearer token, and the signing secret, has its own token bucket
(``ingest_rate_per_second``, ``ingest_rate_burst``), per process.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import anyio
import anyio.to_thread
import orjson
import structlog
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from kpi_app.bootstrap import Runtime
from kpi_app.guards import RateLimiter, bearer, header_bytes, retry_after, secret_matches, signature_error
from kpi_app.publishing import BrokerProbe, Publisher
from kpi_state.events import Rejection
from kpi_state.opmetrics import OpMetrics

log = structlog.get_logger(__name__)

JSON_TYPES = frozenset({"application/json"})
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson"})
# Rejection text is partly the input (an unknown type is quoted): never echo more than this.
MAX_DETAIL_CHARS = 200
BROKER_PROBE_TIMEOUT_SECONDS = 2.0
RETRY_AFTER_UNAVAILABLE = "5"


def json_response(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body), status_code=status, headers=dict(headers or {}), media_type="application/json"
    )


def error(status: int, code: str, message: str, **extra: Any) -> Response:
    headers = {"WWW-Authenticate": 'Bearer realm="kpi"'} if status == 401 else None
    return json_response(status, {"error": code, "message": message, **extra}, headers)


class BodyTooLarge(Exception):
    pass


async def read_limited(request: Request, limit: int) -> bytes:
    """The request body, refusing (``BodyTooLarge``) as soon as it passes ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _media_type(header: str) -> tuple[str, str | None]:
    """``"application/json; charset=UTF-8"`` -> ``("application/json", "utf-8")``."""
    main, *params = header.split(";")
    charset = None
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
    return main.strip().lower(), charset


def _cut(text: str | None) -> str | None:
    if text is None or len(text) <= MAX_DETAIL_CHARS:
        return text
    return text[: MAX_DETAIL_CHARS - 1] + "…"


@dataclass
class Verdict:
    """What validating one body found: the valid events, the first few refusals, all counts."""

    valid: list[Mapping[str, object]] = field(default_factory=list)
    listed: list[dict[str, Any]] = field(default_factory=list)
    by_reason: Counter[str] = field(default_factory=Counter)
    too_many: int | None = None  # the number of events, when above the limit
    invalid_json: bool = False

    def refuse(self, index: int, line: int | None, rejection: Rejection, keep: int) -> None:
        self.by_reason[rejection.reason] += 1
        if len(self.listed) < keep:
            item: dict[str, Any] = {
                "index": index,
                "reason": rejection.reason,
                "field": _cut(rejection.field),
                "detail": _cut(rejection.detail),
            }
            if line is not None:
                item["line"] = line
            self.listed.append(item)

    def report(self) -> dict[str, Any]:
        return {
            "accepted": len(self.valid),
            "rejected": self.listed,
            "rejected_count": sum(self.by_reason.values()),
            "rejected_by_reason": dict(self.by_reason),
        }


class Ingest:
    """The ``POST /events`` endpoint; see the module docstring for the status codes."""

    def __init__(
        self,
        runtime: Runtime,
        publisher: Publisher | None,
        ops: OpMetrics | None,
        probe: BrokerProbe | None = None,
    ) -> None:
        self._settings = runtime.settings
        self._parser = runtime.parser
        self._publisher = publisher
        self._ops = ops
        self._probe = probe
        self._broker_down = False
        settings = runtime.settings
        self._limiter = RateLimiter(settings.ingest_rate_per_second, settings.ingest_rate_burst)
        self._threads: anyio.CapacityLimiter | None = None  # made in the event loop, on first use

    async def handle(self, request: Request) -> Response:
        admitted = await self._admit(request)
        if isinstance(admitted, Response):
            return admitted
        body, ndjson = admitted
        if self._publisher is None:
            return error(503, "ingest_unavailable", "no event publisher configured (start with --kafka-url)")
        if self._threads is None:
            self._threads = anyio.CapacityLimiter(self._settings.ingest_validation_threads)
        verdict = await anyio.to_thread.run_sync(self.validate, body, ndjson, limiter=self._threads)
        if verdict.too_many is not None:
            limit = self._settings.ingest_max_events
            return error(
                413,
                "too_many_events",
                f"a request carries at most {limit} events; split the batch",
                limit=limit,
                events=verdict.too_many,
            )
        if self._ops is not None:
            for reason, n in verdict.by_reason.items():
                self._ops.rejected.labels(reason).inc(n)
        if verdict.invalid_json:
            message = {"error": "invalid_json", "message": "the body is not valid JSON"}
            return json_response(422, {**message, **verdict.report()})
        if not verdict.valid:
            message = {"error": "no_valid_events", "message": "no event in the body is valid"}
            return json_response(422, {**message, **verdict.report()})
        refused = await self._publish(verdict.valid)
        if refused is not None:
            return refused
        log.info("ingest.accepted", accepted=len(verdict.valid), rejected=verdict.report()["rejected_count"])
        return json_response(202, verdict.report())

    async def broker_up(self) -> bool | None:
        """Whether the broker answers now (None: no probe configured); remembered for ``_publish``."""
        if self._probe is None:
            return None
        try:
            async with asyncio.timeout(BROKER_PROBE_TIMEOUT_SECONDS):
                up = await self._probe()
        except Exception as exc:
            log.warning("ingest.broker_probe_failed", error=repr(exc))
            up = False
        self._broker_down = not up
        return up

    async def _publish(self, valid: list[Mapping[str, object]]) -> Response | None:
        """None once every chunk is acknowledged; else the 503 to answer."""
        assert self._publisher is not None
        retry = {"Retry-After": RETRY_AFTER_UNAVAILABLE}
        # After a failure, ask the broker before enqueueing more into a producer that cannot deliver.
        if self._broker_down and await self.broker_up() is False:
            response = error(503, "broker_unavailable", "the event broker does not answer; retry later")
            response.headers.update(retry)
            return response
        chunk = self._settings.message_batch
        try:
            async with asyncio.timeout(self._settings.ingest_publish_timeout_seconds):
                for start in range(0, len(valid), chunk):
                    await self._publisher.publish(valid[start : start + chunk])
        except Exception as exc:
            # Earlier chunks may have gone out: a retry is still safe (de-duplication by event_id).
            self._broker_down = True
            log.exception("ingest.publish_failed", events=len(valid))
            response = error(
                503,
                "publish_failed",
                "events could not be handed to the broker; retry later",
                detail=type(exc).__name__,
            )
            response.headers.update(retry)
            return response
        self._broker_down = False
        return None

    async def _admit(self, request: Request) -> Response | tuple[bytes, bool]:
        """Authentication, rate, content type and size: the refusal, or (body, is NDJSON)."""
        settings = self._settings
        tokens, secret = settings.tokens, settings.ingest_hmac_secret
        if not tokens and not secret:
            return error(
                401,
                "ingest_disabled",
                "ingest is disabled: configure KPI_INGEST_TOKENS and/or KPI_INGEST_HMAC_SECRET",
            )
        authorized = False
        auth = request.headers.get("authorization")
        if auth is not None and tokens:
            presented = bearer(auth)
            if presented is None or not secret_matches(header_bytes(presented), tokens):
                return error(401, "unauthorized", "invalid bearer token")
            authorized = True
            # Which token, by position: the bucket key never comes from the request itself.
            limited = self._rate_limited(f"token:{self._token_index(presented)}")
            if limited is not None:
                return limited
        signature = request.headers.get("x-signature-256") if secret else None
        if not authorized and signature is None:
            return error(
                401,
                "unauthorized",
                "missing credentials: Authorization: Bearer <token>"
                + (" or X-Signature-Timestamp and X-Signature-256" if secret else ""),
            )
        media, charset = _media_type(request.headers.get("content-type", ""))
        if media not in JSON_TYPES | NDJSON_TYPES or charset not in (None, "utf-8", "utf8"):
            return error(
                415,
                "unsupported_media_type",
                "Content-Type must be application/json or application/x-ndjson (UTF-8)",
            )
        limit = settings.ingest_max_body_bytes
        too_large = error(413, "payload_too_large", f"the body is limited to {limit} bytes", limit=limit)
        length = request.headers.get("content-length")
        if length is not None and (not length.strip().isdigit() or int(length) > limit):
            return too_large
        try:
            body = await read_limited(request, limit)
        except BodyTooLarge:
            return too_large
        except ClientDisconnect:
            return error(400, "client_disconnected", "the client went away while sending")
        if signature is not None:
            why = signature_error(
                signature,
                request.headers.get("x-signature-timestamp"),
                secret,
                body,
                now=time.time(),
                tolerance=settings.ingest_signature_tolerance_seconds,
            )
            if why is not None:
                return error(401, "unauthorized", why)
            if not authorized:
                limited = self._rate_limited("hmac")
                if limited is not None:
                    return limited
        return body, media in NDJSON_TYPES

    def _token_index(self, presented: str) -> int:
        given = header_bytes(presented)
        return next(i for i, t in enumerate(self._settings.tokens) if secret_matches(given, [t]))

    def _rate_limited(self, key: str) -> Response | None:
        wait = self._limiter.acquire(key)
        if wait <= 0:
            return None
        response = error(
            429,
            "rate_limited",
            f"more than {self._settings.ingest_rate_per_second:g} requests a second for this credential",
        )
        response.headers["Retry-After"] = retry_after(wait)
        return response

    def validate(self, body: bytes, ndjson: bool) -> Verdict:
        """Parse and validate a body (blocking: runs in a worker thread). Stops at the count
        check when there are more than ``ingest_max_events`` events."""
        verdict = Verdict()
        keep = self._settings.ingest_rejections_listed
        records: list[tuple[int | None, object]]
        if ndjson:
            lines = [(n, text) for n, text in enumerate(body.split(b"\n"), start=1) if text.strip()]
            if len(lines) > self._settings.ingest_max_events:
                verdict.too_many = len(lines)
                return verdict
            records = []
            for number, text in lines:
                try:
                    records.append((number, orjson.loads(text)))
                except orjson.JSONDecodeError as exc:
                    records.append((number, Rejection("invalid_json", None, str(exc))))
        else:
            try:
                obj = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                verdict.invalid_json = True
                verdict.refuse(0, None, Rejection("invalid_json", None, str(exc)), keep)
                return verdict
            items = obj if isinstance(obj, list) else [obj]
            if len(items) > self._settings.ingest_max_events:
                verdict.too_many = len(items)
                return verdict
            records = [(None, item) for item in items]
        now = datetime.now(UTC)
        for index, (line, item) in enumerate(records):
            outcome = item if isinstance(item, Rejection) else self._parser.parse_object(item, now)
            if not isinstance(outcome, Rejection):
                # The store refuses amounts it cannot keep exactly: say so now, not in the dead letters.
                outcome = self._parser.amount_error(outcome) or outcome
            if isinstance(outcome, Rejection):
                verdict.refuse(index, line, outcome, keep)
            else:
                verdict.valid.append(cast(Mapping[str, object], item))  # parse_object accepts only objects
        return verdict
