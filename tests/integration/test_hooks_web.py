"""POST /hooks/hubspot and /hooks/pipedrive (kpi_app.hooks_web): authentication, refusals, storage.

The raw publisher is our own seam to the hooks topic: a recording one here; the broker path is
the end-to-end test (test_hooks_e2e.py).
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable

import httpx
import orjson
import pytest

from kpi_app.bootstrap import build_runtime
from kpi_app.hooks_web import hubspot_signature
from kpi_app.web import create_app
from kpi_state.settings import Settings

pytestmark = pytest.mark.integration

SECRET = "hs-app-secret"
BASIC = "kpi:pd-password"
URL = "http://testserver/hooks/hubspot"
BODY = orjson.dumps(
    [
        {
            "eventId": 1,
            "subscriptionId": 2291,
            "portalId": 62515,
            "appId": 1160452,
            "occurredAt": 1767225600000,
            "subscriptionType": "deal.creation",
            "attemptNumber": 0,
            "objectId": 5001,
            "changeSource": "CRM_UI",
        }
    ]
)


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.stored: list[bytes] = []
        self.fail = fail

    async def __call__(self, value: bytes) -> None:
        if self.fail:
            raise ConnectionError("broker unreachable")
        self.stored.append(value)


def signed(body: bytes = BODY, *, uri: str = URL, age_ms: int = 0, secret: str = SECRET) -> dict[str, str]:
    stamp = str(int(time.time() * 1000) - age_ms)
    return {
        "Content-Type": "application/json",
        "X-HubSpot-Request-Timestamp": stamp,
        "X-HubSpot-Signature-v3": hubspot_signature(secret, "POST", uri, body, stamp),
    }


def basic(credentials: str = BASIC) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "Authorization": "Basic " + base64.b64encode(credentials.encode()).decode(),
    }


def call(
    settings: Settings, recorder: Recorder, scenario: Callable[[httpx.AsyncClient], Awaitable[None]]
) -> None:
    async def main() -> None:
        runtime = build_runtime(settings)
        app = create_app(runtime, publisher=None, hooks_publish=recorder)
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://testserver"
            ) as c:
                await scenario(c)
        finally:
            await runtime.aclose()

    asyncio.run(main())


def test_hubspot_signature_good_wrong_stale(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(hubspot_app_secret=SECRET)
    recorder = Recorder()

    async def scenario(c: httpx.AsyncClient) -> None:
        ok = await c.post("/hooks/hubspot", content=BODY, headers=signed())
        assert ok.status_code == 200 and ok.json() == {"stored": True}
        # Signed with another secret, over another body, another URI; stale; missing headers.
        refusals: list[tuple[dict[str, str], bytes, str]] = [
            (signed(secret="other"), BODY, "does not match"),
            (signed(), BODY + b" ", "does not match"),
            (signed(uri="http://testserver/hooks/other"), BODY, "does not match"),
            (signed(age_ms=5 * 60 * 1000 + 2000), BODY, "5 minutes"),
            ({"Content-Type": "application/json"}, BODY, "missing"),
            ({**signed(), "X-HubSpot-Signature-v3": "not base64!"}, BODY, "base64"),
        ]
        for headers, body, why in refusals:
            response = await c.post("/hooks/hubspot", content=body, headers=headers)
            assert response.status_code == 401, why
            assert why in response.json()["message"]
        # A signed body that is not JSON, or not an array, is refused before it is stored.
        assert (await c.post("/hooks/hubspot", content=b"{oops", headers=signed(b"{oops"))).status_code == 400
        not_array = b'{"eventId": 1}'
        answer = await c.post("/hooks/hubspot", content=not_array, headers=signed(not_array))
        assert answer.status_code == 400 and answer.json()["error"] == "invalid_payload"

    call(settings, recorder, scenario)
    (stored,) = recorder.stored
    envelope = orjson.loads(stored)
    assert envelope["vendor"] == "hubspot" and envelope["body"] == orjson.loads(BODY)
    assert abs(envelope["received_at"] - time.time() * 1000) < 60_000


def test_hubspot_behind_a_proxy_signs_the_public_url(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(hubspot_app_secret=SECRET, hubspot_public_url="https://kpi.example.com/")
    recorder = Recorder()
    public = "https://kpi.example.com/hooks/hubspot?portal=62515"

    async def scenario(c: httpx.AsyncClient) -> None:
        ok = await c.post("/hooks/hubspot?portal=62515", content=BODY, headers=signed(uri=public))
        assert ok.status_code == 200
        seen = await c.post(
            "/hooks/hubspot?portal=62515", content=BODY, headers=signed(uri=URL + "?portal=62515")
        )
        assert seen.status_code == 401
        # HubSpot signs the URI with some percent-encodings decoded (":" here).
        decoded = "https://kpi.example.com/hooks/hubspot?app=a:b"
        colon = await c.post("/hooks/hubspot?app=a%3Ab", content=BODY, headers=signed(uri=decoded))
        assert colon.status_code == 200

    call(settings, recorder, scenario)
    assert len(recorder.stored) == 2


def test_pipedrive_basic_auth(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(pipedrive_auth=BASIC)
    recorder = Recorder()
    body = orjson.dumps(
        {"meta": {"action": "create", "entity": "deal", "id": "x"}, "data": {}, "previous": None}
    )

    async def scenario(c: httpx.AsyncClient) -> None:
        assert (await c.post("/hooks/pipedrive", content=body, headers=basic())).status_code == 200
        for headers in (basic("kpi:wrong"), basic("kpi"), {"Content-Type": "application/json"},
                        {"Authorization": "Basic !!!"}):  # fmt: skip
            response = await c.post("/hooks/pipedrive", content=body, headers=headers)
            assert response.status_code == 401
            assert response.headers["WWW-Authenticate"].startswith("Basic")
        assert (await c.post("/hooks/pipedrive", content=b"<xml/>", headers=basic())).status_code == 400

    call(settings, recorder, scenario)
    assert [orjson.loads(v)["vendor"] for v in recorder.stored] == ["pipedrive"]


def test_disabled_connectors_and_store_failures(make_settings: Callable[..., Settings]) -> None:
    async def disabled(c: httpx.AsyncClient) -> None:
        for path in ("/hooks/hubspot", "/hooks/pipedrive"):
            response = await c.post(path, content=BODY, headers=signed())
            assert response.status_code == 401 and response.json()["error"] == "connector_disabled"

    call(make_settings(), Recorder(), disabled)

    async def failing(c: httpx.AsyncClient) -> None:
        response = await c.post("/hooks/hubspot", content=BODY, headers=signed())
        assert response.status_code == 503 and response.headers["Retry-After"] == "5"

    call(make_settings(hubspot_app_secret=SECRET), Recorder(fail=True), failing)

    async def too_large(c: httpx.AsyncClient) -> None:
        big = b"[" + b" " * 2048 + b"]"
        assert (await c.post("/hooks/pipedrive", content=big, headers=basic())).status_code == 413

    call(make_settings(pipedrive_auth=BASIC, ingest_max_body_bytes=1024), Recorder(), too_large)
