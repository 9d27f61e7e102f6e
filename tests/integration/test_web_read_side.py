"""The read side of the HTTP app under failure and without trust (issue 15, defect 6): Redis
down, absurd as_of, security headers on every path to the wall page, read tokens and view
keys. Real Redis (and a closed port for "down"), as test_web.py."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from kpi_app.bootstrap import Runtime
from kpi_state.settings import Settings
from tests.integration.test_web import TOKEN, drive

pytestmark = pytest.mark.integration

CLOSED_PORT_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1: connection refused


def test_api_and_metrics_answer_503_json_when_redis_is_unreachable(
    make_settings: Callable[..., Settings],
) -> None:
    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        for path in ("/api/kpis", "/api/kpis?window=30d&by=rep", "/metrics"):
            response = await client.get(path)
            assert response.status_code == 503, path
            assert response.headers["content-type"] == "application/json"
            body = response.json()
            assert body["error"] == "redis_unavailable"
            assert "Redis" in body["message"]
        health = await client.get("/healthz")
        assert health.status_code == 503

    drive(make_settings(redis_url=CLOSED_PORT_REDIS), scenario)


@pytest.mark.parametrize("timezone", ["UTC", "America/Los_Angeles", "Asia/Tokyo"])
@pytest.mark.parametrize(
    "as_of",
    [
        "0001-01-01T00:00:00Z",
        "0001-01-01T00:00:00+05:00",
        "9999-12-31T23:59:59Z",
        "9999-12-31T23:59:59-05:00",
        "1969-12-31T23:59:59Z",
        "2200-01-01T00:00:00Z",
    ],
)
def test_as_of_out_of_range_is_400_in_any_timezone(
    make_settings: Callable[..., Settings], timezone: str, as_of: str
) -> None:
    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        response = await client.get("/api/kpis", params={"as_of": as_of})
        assert response.status_code == 400
        assert response.json()["error"] == "bad_request"
        assert "1970" in response.json()["message"]

    drive(make_settings(timezone=timezone), scenario)


def test_as_of_at_the_range_edges_is_answered(make_settings: Callable[..., Settings]) -> None:
    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        for as_of in ("1970-01-01T00:00:00Z", "2199-12-31T15:59:59-08:00"):
            response = await client.get("/api/kpis", params={"as_of": as_of, "window": "90d,1h"})
            assert response.status_code == 200, as_of

    drive(make_settings(timezone="America/Los_Angeles"), scenario)


def test_every_path_to_the_wall_page_has_the_security_headers(settings_open: Settings) -> None:
    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        root = await client.get("/")
        static = await client.get("/static/index.html")
        assert root.status_code == static.status_code == 200
        assert static.text == root.text
        assert static.headers["content-type"].startswith("text/html")
        for response in (root, static, await client.get("/static/wall.js"), await client.get("/api/kpis")):
            headers = response.headers
            assert "default-src 'self'" in headers["content-security-policy"]
            assert "frame-ancestors 'none'" in headers["content-security-policy"]
            assert headers["x-content-type-options"] == "nosniff"
            assert headers["referrer-policy"] == "no-referrer"
            assert headers["x-frame-options"] == "DENY"
        missing = await client.get("/static/nope.js")
        assert missing.status_code == 404
        assert missing.headers["x-content-type-options"] == "nosniff"

    drive(settings_open, scenario)


@pytest.fixture
def settings_open(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(ingest_tokens=TOKEN)


@pytest.fixture
def settings_guarded(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(ingest_tokens=TOKEN, read_tokens="read-1, read-2", view_keys="tv-key")


READ_PATHS = ("/", "/static/index.html", "/api/kpis", "/api/alerts", "/metrics")


def test_without_read_tokens_reads_stay_open(settings_open: Settings) -> None:
    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        for path in READ_PATHS:
            assert (await client.get(path)).status_code == 200, path

    drive(settings_open, scenario)


def test_read_tokens_guard_every_read_endpoint(settings_guarded: Settings) -> None:
    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        for path in READ_PATHS:
            anonymous = await client.get(path)
            assert anonymous.status_code == 401, path
            assert anonymous.json()["error"] == "unauthorized"
            assert anonymous.headers["www-authenticate"].startswith("Bearer")
            for auth in ("Bearer nope", f"Bearer {TOKEN}", "Bearer tv-key", "Basic cmVhZC0x"):
                assert (await client.get(path, headers={"Authorization": auth})).status_code == 401, auth
            for token in ("read-1", "read-2"):
                ok = await client.get(path, headers={"Authorization": f"Bearer {token}"})
                assert ok.status_code == 200, (path, token)
        # Health stays open, and the assets carry no data.
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/api/health")).status_code == 200
        assert (await client.get("/static/wall.js")).status_code == 200

    drive(settings_guarded, scenario)


def test_a_view_key_opens_the_wall_page_and_its_api_calls_only(settings_guarded: Settings) -> None:
    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        page = await client.get("/", params={"key": "tv-key"})
        assert page.status_code == 200
        assert 'data-kpi="ltv_cac_ratio"' in page.text
        # What wall.js asks for, with the key of its own URL appended.
        for params in (
            {"window": "30d", "by": "rep"},
            {"window": "30d", "by": "total", "as_of": "2026-01-01T00:00:00Z"},
        ):
            api = await client.get("/api/kpis", params={**params, "key": "tv-key"})
            assert api.status_code == 200
            assert "30d" in api.json()["windows"]
        for wrong in ("tv-ke", "tv-key ", "read-1", ""):
            assert (await client.get("/api/kpis", params={"key": wrong})).status_code == 401, wrong
            assert (await client.get("/api/alerts", params={"key": wrong})).status_code == 401, wrong
        # The alert banner's call (no Alertmanager configured here: an empty banner).
        alerts = await client.get("/api/alerts", params={"key": "tv-key"})
        assert alerts.status_code == 200
        assert alerts.json() == {"enabled": False, "available": False, "total": 0, "alerts": []}
        # Not /metrics: Prometheus scrapes with a read token.
        assert (await client.get("/metrics", params={"key": "tv-key"})).status_code == 401

    drive(settings_guarded, scenario)


def test_wall_script_passes_its_view_key_to_the_api() -> None:
    """The wall page's API calls carry the ``key`` of the page URL (exercised in a browser by tests/e2e)."""
    from kpi_app.web import STATIC_DIR

    script = (STATIC_DIR / "wall.js").read_text()
    assert 'new URLSearchParams(location.search).get("key")' in script
    assert "fetch(withKey(url)" in script
