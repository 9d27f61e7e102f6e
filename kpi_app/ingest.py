"""``POST /events``: CRM webhooks and batch senders hand events to the topic.

The body is one event (a JSON object), a batch (a JSON array), or NDJSON
(``application/x-ndjson``, one event per non-blank line). Each event is validated on
its own (``EventParser.parse_object``, plus the store's amount range); the valid ones
are handed, as the JSON objects received, to the ``Publisher`` in chunks of
``message_batch`` (one topic message each). The worker validates again; ingest never
writes KPI state itself. Every answer is JSON; an error is ``{"error": <code>,
"message": ..., ...}``.

====  ==========================================================================
202   ``{"accepted": n, "rejected": [{"index", "field", "reason", "detail"}]}``
      (NDJSON items also carry ``line``, 1-based); only the valid events published
401   ingest disabled (neither token nor secret configured: never open by default),
      credentials missing, a wrong bearer token, a wrong signature
413   Content-Length, or the body as streamed, above ``ingest_max_body_bytes``
415   content type not ``application/json`` / ``application/x-ndjson`` (or a
      ``charset`` other than UTF-8)
422   the body is not JSON (``error`` and ``reason`` ``invalid_json``), or no event
      is valid (the 202 shape with ``accepted: 0``)
503   no publisher (no ``--kafka-url``), or publishing failed: nothing is reported
      accepted, and a retry is safe (the worker de-duplicates by ``event_id``)
====  ==========================================================================

Authentication: ``Authorization: Bearer <token>``, compared in constant time with
every configured token, or ``X-Signature-256: sha256=<hex>``, the HMAC-SHA256 of the
raw body with ``ingest_hmac_secret``. A credential for a configured mechanism must be
right when present (a wrong one is 401 even if the other is right); a credential for
a mechanism that is not configured is ignored.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, cast

import orjson
import structlog
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from kpi_app.bootstrap import Runtime
from kpi_state.events import Rejection
from kpi_state.opmetrics import OpMetrics
from kpi_state.store import FactBuilder

log = structlog.get_logger(__name__)

JSON_TYPES = frozenset({"application/json"})
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson"})


class Publisher(Protocol):
    """Where valid ingested events go (the Kafka topic in production). Raises on failure."""

    async def publish(self, events: Sequence[Mapping[str, object]]) -> None: ...


class _Sender(Protocol):
    async def send_event(self, event: Mapping[str, object], *, wait: bool = False) -> None: ...
    async def send_batch(self, events: Sequence[Mapping[str, object]], *, wait: bool = False) -> None: ...


class ProducerPublisher:
    """A ``Publisher`` over ``streams.producer.EventProducer``: returns once the broker acknowledged.

    A single event goes as a JSON object (keyed by its entity), several as one JSON array.
    """

    def __init__(self, producer: _Sender) -> None:
        self._producer = producer

    async def publish(self, events: Sequence[Mapping[str, object]]) -> None:
        if len(events) == 1:
            await self._producer.send_event(events[0], wait=True)
        elif events:
            await self._producer.send_batch(events, wait=True)


def json_response(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body), status_code=status, headers=dict(headers or {}), media_type="application/json"
    )


def error(status: int, code: str, message: str, **extra: Any) -> Response:
    headers = {"WWW-Authenticate": 'Bearer realm="kpi-ingest"'} if status == 401 else None
    return json_response(status, {"error": code, "message": message, **extra}, headers)


class _BodyTooLarge(Exception):
    pass


async def read_limited(request: Request, limit: int) -> bytes:
    """The request body, refusing (``_BodyTooLarge``) as soon as it passes ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _token_matches(presented: bytes, tokens: Sequence[str]) -> bool:
    # Compare against every token, without an early exit, so timing says nothing about which.
    ok = False
    for token in tokens:
        ok |= hmac.compare_digest(presented, token.encode())
    return ok


def _signature_matches(header: str, secret: str, body: bytes) -> bool:
    scheme, _, given = header.strip().partition("=")
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest().encode()
    presented = given.strip().lower().encode("latin-1")
    return scheme.lower() == "sha256" and hmac.compare_digest(expected, presented)


def _media_type(header: str) -> tuple[str, str | None]:
    """``"application/json; charset=UTF-8"`` -> ``("application/json", "utf-8")``."""
    main, *params = header.split(";")
    charset = None
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
    return main.strip().lower(), charset


def _records(body: bytes, ndjson: bool) -> list[tuple[int | None, object]] | Rejection:
    """(line, parsed item) per record: NDJSON lines (an unparseable line is a Rejection
    item), or the items of one JSON body. An unparseable JSON body is one Rejection."""
    if ndjson:
        out: list[tuple[int | None, object]] = []
        for number, line in enumerate(body.split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                out.append((number, orjson.loads(line)))
            except orjson.JSONDecodeError as exc:
                out.append((number, Rejection("invalid_json", None, str(exc))))
        return out
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return Rejection("invalid_json", None, str(exc))
    items = obj if isinstance(obj, list) else [obj]
    return [(None, item) for item in items]


class Ingest:
    """The ``POST /events`` endpoint; see the module docstring for the status codes."""

    def __init__(self, runtime: Runtime, publisher: Publisher | None, ops: OpMetrics | None) -> None:
        self._settings = runtime.settings
        self._parser = runtime.parser
        self._facts = FactBuilder(runtime.settings)
        self._publisher = publisher
        self._ops = ops

    async def handle(self, request: Request) -> Response:
        admitted = await self._admit(request)
        if isinstance(admitted, Response):
            return admitted
        body, ndjson = admitted
        if self._publisher is None:
            return error(503, "ingest_unavailable", "no event publisher configured (start with --kafka-url)")
        records = _records(body, ndjson)
        if isinstance(records, Rejection):
            self._count([records])
            return json_response(
                422,
                {
                    "error": "invalid_json",
                    "message": "the body is not valid JSON",
                    "accepted": 0,
                    "rejected": [{"index": 0, **records.as_dict()}],
                },
            )
        valid, refused = self._validate(records)
        self._count(r for _, _, r in refused)
        rejected = [{"index": i, **r.as_dict(), **({"line": line} if line else {})} for i, line, r in refused]
        if not valid:
            return json_response(
                422,
                {
                    "error": "no_valid_events",
                    "message": "no event in the body is valid",
                    "accepted": 0,
                    "rejected": rejected,
                },
            )
        chunk = self._settings.message_batch
        try:
            for start in range(0, len(valid), chunk):
                await self._publisher.publish(valid[start : start + chunk])
        except Exception as exc:
            # Earlier chunks may have gone out: a retry is still safe (de-duplication by event_id).
            log.exception("ingest.publish_failed", events=len(valid))
            return error(
                503,
                "publish_failed",
                "events could not be handed to the broker; retry later",
                detail=type(exc).__name__,
            )
        log.info("ingest.accepted", accepted=len(valid), rejected=len(rejected))
        return json_response(202, {"accepted": len(valid), "rejected": rejected})

    async def _admit(self, request: Request) -> Response | tuple[bytes, bool]:
        """Authentication, content type and size: the refusal, or (body, is NDJSON)."""
        tokens, secret = self._settings.tokens, self._settings.ingest_hmac_secret
        if not tokens and not secret:
            return error(
                401,
                "ingest_disabled",
                "ingest is disabled: configure KPI_INGEST_TOKENS and/or KPI_INGEST_HMAC_SECRET",
            )
        authorized = False
        auth = request.headers.get("authorization")
        if auth is not None and tokens:
            scheme, _, presented = auth.strip().partition(" ")
            if scheme.lower() != "bearer" or not _token_matches(presented.strip().encode("latin-1"), tokens):
                return error(401, "unauthorized", "invalid bearer token")
            authorized = True
        signature = request.headers.get("x-signature-256") if secret else None
        if not authorized and signature is None:
            return error(
                401,
                "unauthorized",
                "missing credentials: Authorization: Bearer <token>"
                + (" or X-Signature-256: sha256=<hmac>" if secret else ""),
            )
        media, charset = _media_type(request.headers.get("content-type", ""))
        if media not in JSON_TYPES | NDJSON_TYPES or charset not in (None, "utf-8", "utf8"):
            return error(
                415,
                "unsupported_media_type",
                "Content-Type must be application/json or application/x-ndjson (UTF-8)",
            )
        limit = self._settings.ingest_max_body_bytes
        too_large = error(413, "payload_too_large", f"the body is limited to {limit} bytes", limit=limit)
        length = request.headers.get("content-length")
        if length is not None and (not length.strip().isdigit() or int(length) > limit):
            return too_large
        try:
            body = await read_limited(request, limit)
        except _BodyTooLarge:
            return too_large
        except ClientDisconnect:
            return error(400, "client_disconnected", "the client went away while sending")
        if signature is not None and not _signature_matches(signature, secret, body):
            return error(401, "unauthorized", "X-Signature-256 does not match the body")
        return body, media in NDJSON_TYPES

    def _count(self, rejections: Iterable[Rejection]) -> None:
        if self._ops is not None:
            self._ops.record_rejections(rejections)

    def _validate(
        self, records: list[tuple[int | None, object]]
    ) -> tuple[list[Mapping[str, object]], list[tuple[int, int | None, Rejection]]]:
        """The valid events (the objects received) and (index, line, rejection) of the others."""
        now = datetime.now(UTC)
        valid: list[Mapping[str, object]] = []
        refused: list[tuple[int, int | None, Rejection]] = []
        for index, (line, item) in enumerate(records):
            outcome = item if isinstance(item, Rejection) else self._parser.parse_object(item, now)
            if not isinstance(outcome, Rejection):
                # The store refuses amounts it cannot keep exactly: say so now, not in the dead letters.
                outcome = self._facts.amount_error(outcome) or outcome
            if isinstance(outcome, Rejection):
                refused.append((index, line, outcome))
            else:
                valid.append(cast(Mapping[str, object], item))  # parse_object accepts only objects
        return valid, refused
