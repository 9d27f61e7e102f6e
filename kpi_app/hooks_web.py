"""``POST /hooks/hubspot`` and ``POST /hooks/pipedrive``: authenticate, store the raw payload, answer.

The answer must come within the CRM's timeout (HubSpot: 5 s; Pipedrive bans slow endpoints), so
nothing is translated here: an authentic body that is JSON is published as it is, wrapped in an
envelope ``{"vendor", "received_at" (epoch ms), "body"}``, to the hooks topic
(``KPI_HOOKS_TOPIC``), and answered 200 once the broker acknowledged it. `kpi hooks-worker`
translates it into events (``streams.hooks_worker``); what cannot be translated becomes a dead
letter there, never an error here.

====  =====================================================================================
200   ``{"stored": true}``: the payload is on the hooks topic
400   the body is not JSON (``invalid_json``); a HubSpot body that is not a JSON array
401   the connector is not configured (``connector_disabled``); HubSpot: a missing or wrong
      ``X-HubSpot-Signature-v3``, a ``X-HubSpot-Request-Timestamp`` older than 5 minutes (or
      more than 5 minutes ahead); Pipedrive: missing or wrong HTTP Basic credentials
413   the body is larger than ``KPI_INGEST_MAX_BODY_BYTES``
503   no broker (``--kafka-url``), or it did not acknowledge within
      ``KPI_INGEST_PUBLISH_TIMEOUT_SECONDS``: the CRM retries, and retries are duplicates
====  =====================================================================================

HubSpot signature v3: base64 of HMAC-SHA256 keyed with the app secret over
``method + URI + body + timestamp``, where URI is the full URL HubSpot called. Behind a proxy
that changes the scheme, host or port, set ``KPI_HUBSPOT_PUBLIC_URL`` to what HubSpot calls
(e.g. ``https://kpi.example.com``); the path and query are taken from the request as received,
with the percent-encodings HubSpot decodes before signing (``%3A``, ``%2F``, ``%3F``, ``%40``,
``%21``, ``%24``, ``%27``, ``%28``, ``%29``, ``%2A``, ``%2C``, ``%3B``) decoded.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Awaitable, Callable

import orjson
import structlog
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from kpi_app.guards import secret_matches
from kpi_app.ingest import BodyTooLarge, error, json_response, read_limited
from kpi_state.settings import Settings

log = structlog.get_logger(__name__)

HUBSPOT_MAX_AGE_MS = 5 * 60 * 1000
# HubSpot signs the URI with these percent-encodings decoded (its request-validation docs).
_HUBSPOT_DECODED = re.compile(r"%(3A|2F|3F|40|21|24|27|28|29|2A|2C|3B)", re.IGNORECASE)
RawPublisher = Callable[[bytes], Awaitable[None]]


def hubspot_signature(secret: str, method: str, uri: str, body: bytes, timestamp: str) -> str:
    source = method.encode() + uri.encode() + body + timestamp.encode()
    return base64.b64encode(hmac.new(secret.encode(), source, hashlib.sha256).digest()).decode()


def hubspot_uri(request: Request, public_url: str) -> str:
    """The URL HubSpot called: ``public_url`` (scheme://host[:port]) when set, else as seen."""
    raw: bytes = request.scope.get("raw_path") or request.url.path.encode()
    path = raw.decode("latin-1")
    query = request.url.query
    tail = path + (f"?{query}" if query else "")
    if public_url:
        uri = public_url.rstrip("/") + tail
    else:
        uri = f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}{tail}"
    return _HUBSPOT_DECODED.sub(lambda m: chr(int(m.group(1), 16)), uri)


def hubspot_refusal(settings: Settings, request: Request, body: bytes, now_ms: int) -> str | None:
    signature = request.headers.get("x-hubspot-signature-v3")
    stamp = request.headers.get("x-hubspot-request-timestamp", "").strip()
    if signature is None or not stamp:
        return "missing X-HubSpot-Signature-v3 or X-HubSpot-Request-Timestamp"
    if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 15:
        return "X-HubSpot-Request-Timestamp must be epoch milliseconds"
    if abs(now_ms - int(stamp)) > HUBSPOT_MAX_AGE_MS:
        return "X-HubSpot-Request-Timestamp is more than 5 minutes from the server's clock"
    uri = hubspot_uri(request, settings.hubspot_public_url)
    expected = hubspot_signature(settings.hubspot_app_secret, request.method, uri, body, stamp)
    try:
        given = base64.b64decode(signature.strip(), validate=True)
    except (binascii.Error, ValueError):
        return "X-HubSpot-Signature-v3 is not base64"
    if not hmac.compare_digest(given, base64.b64decode(expected)):
        return "X-HubSpot-Signature-v3 does not match (method + URI + body + timestamp)"
    return None


def pipedrive_refusal(settings: Settings, request: Request) -> str | None:
    scheme, _, encoded = request.headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() != "basic":
        return "missing HTTP Basic credentials"
    try:
        presented = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return "malformed HTTP Basic credentials"
    if not secret_matches(presented, [settings.pipedrive_auth]):
        return "wrong HTTP Basic credentials"
    return None


def envelope(vendor: str, body: bytes, received_ms: int) -> bytes:
    """The hooks-topic message: the body verbatim inside a JSON envelope (the body is valid JSON)."""
    return b'{"vendor":"%s","received_at":%d,"body":%s}' % (vendor.encode(), received_ms, body)


def hook_routes(settings: Settings, publish: RawPublisher | None) -> list[Route]:
    async def receive(request: Request, vendor: str) -> Response:
        configured = settings.hubspot_app_secret if vendor == "hubspot" else settings.pipedrive_auth
        if not configured:
            variable = "KPI_HUBSPOT_APP_SECRET" if vendor == "hubspot" else "KPI_PIPEDRIVE_AUTH"
            return error(401, "connector_disabled", f"the {vendor} connector needs {variable}")
        if vendor == "pipedrive":
            refusal = pipedrive_refusal(settings, request)
            if refusal is not None:
                response = error(401, "unauthorized", refusal)
                response.headers["WWW-Authenticate"] = 'Basic realm="kpi"'
                return response
        limit = settings.ingest_max_body_bytes
        try:
            body = await read_limited(request, limit)
        except BodyTooLarge:
            return error(413, "payload_too_large", f"the body is limited to {limit} bytes", limit=limit)
        except ClientDisconnect:
            return error(400, "client_disconnected", "the client went away while sending")
        now_ms = int(time.time() * 1000)
        if vendor == "hubspot":
            refusal = hubspot_refusal(settings, request, body, now_ms)
            if refusal is not None:
                return error(401, "unauthorized", refusal)
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            return error(400, "invalid_json", "the body is not valid JSON")
        if vendor == "hubspot" and not isinstance(parsed, list):
            return error(400, "invalid_payload", "a HubSpot webhook body is a JSON array of events")
        if publish is None:
            return error(503, "ingest_unavailable", "no broker configured (start with --kafka-url)")
        try:
            async with asyncio.timeout(settings.ingest_publish_timeout_seconds):
                await publish(envelope(vendor, body, now_ms))
        except Exception as exc:
            log.warning("hooks.store_failed", vendor=vendor, error=repr(exc))
            response = error(503, "publish_failed", "the payload could not be stored; retry later")
            response.headers["Retry-After"] = "5"
            return response
        return json_response(200, {"stored": True})

    async def hubspot(request: Request) -> Response:
        return await receive(request, "hubspot")

    async def pipedrive(request: Request) -> Response:
        return await receive(request, "pipedrive")

    return [
        Route("/hooks/hubspot", hubspot, methods=["POST"]),
        Route("/hooks/pipedrive", pipedrive, methods=["POST"]),
    ]
