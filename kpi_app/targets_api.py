"""``PUT /api/targets``: replace every target (DESIGN section 4), authenticated like the
ingest (``Authorization: Bearer <ingest token>``; with no ingest token configured it is
disabled, never open). The body is a JSON list of ``{kpi, period, scope, value}``; any bad
entry refuses the whole set (422, each bad entry by position with its reason), so a
half-valid quota file never replaces a good one. 200 ``{"loaded": n}``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
from starlette.requests import Request
from starlette.responses import Response

from kpi_app.bootstrap import Runtime
from kpi_app.guards import bearer, header_bytes, secret_matches
from kpi_app.ingest import error, json_response
from kpi_state.targets import TargetsRefused, validate_targets

# A target is ~100 bytes of JSON: thousands fit, far more than a sales team sets.
MAX_BODY = 1_048_576


def targets_handler(runtime: Runtime) -> Callable[[Request], Awaitable[Response]]:
    tokens = runtime.settings.tokens

    async def put_targets(request: Request) -> Response:
        if not tokens:
            return error(401, "targets_disabled", "setting targets needs KPI_INGEST_TOKENS configured")
        presented = bearer(request.headers.get("authorization"))
        if presented is None or not secret_matches(header_bytes(presented), tokens):
            return error(401, "unauthorized", "setting targets needs Authorization: Bearer <ingest token>")
        too_large = error(
            413, "payload_too_large", f"the body is limited to {MAX_BODY} bytes", limit=MAX_BODY
        )
        length = request.headers.get("content-length")
        if length is not None and (not length.strip().isdigit() or int(length) > MAX_BODY):
            return too_large
        body = await request.body()
        if len(body) > MAX_BODY:
            return too_large
        try:
            entries = orjson.loads(body)
        except orjson.JSONDecodeError:
            return error(422, "invalid_json", "the body is not JSON")
        if not isinstance(entries, list):
            return error(422, "invalid_targets", "expected a JSON list of {kpi, period, scope, value}")
        try:
            targets = validate_targets(entries)
        except TargetsRefused as exc:
            problems = [{"entry": n, "reason": reason} for n, reason in exc.problems]
            return error(
                422, "invalid_targets", "nothing loaded: the set is refused whole", problems=problems
            )
        await runtime.reader.targets.replace(targets)
        return json_response(200, {"loaded": len(targets)})

    return put_targets
