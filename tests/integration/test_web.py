"""The HTTP app (kpi_app.web) against a real Redis, in a namespace of its own per test.

The ``Publisher`` is our own seam between the ingest and Kafka, so these tests hand the
app a recording publisher; the Kafka path is covered by the broker end-to-end tests.
Tests are synchronous and run their coroutines with ``asyncio.run`` (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry

from kpi_app import web
from kpi_app.bootstrap import Runtime, build_runtime
from kpi_app.web import create_app
from kpi_state.events import Rejection
from kpi_state.opmetrics import OpMetrics
from kpi_state.settings import Settings

pytestmark = pytest.mark.integration

TOKEN = "tok-b"
SECRET = "hook-secret"
JSON = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
NOW = datetime.now(UTC).replace(microsecond=0)

Scenario = Callable[[httpx.AsyncClient, Runtime], Awaitable[None]]


class RecordingPublisher:
    """Records every publish call (one call per topic message); can be told to fail."""

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[dict[str, object]]] = []
        self.fail = fail

    async def publish(self, events: Sequence[Mapping[str, object]]) -> None:
        if self.fail:
            raise ConnectionError("broker unreachable")
        self.batches.append([dict(e) for e in events])

    @property
    def events(self) -> list[dict[str, object]]:
        return [e for batch in self.batches for e in batch]


def at(minutes_ago: float) -> str:
    return (NOW - timedelta(minutes=minutes_ago)).isoformat().replace("+00:00", "Z")


def lead(n: int, **extra: object) -> dict[str, object]:
    return {
        "event_id": f"lc-{n}",
        "type": "lead.created",
        "occurred_at": at(30),
        "lead_id": f"L{n}",
        "source": "web",
        "segment": "smb",
        "rep_id": "alice",
        **extra,
    }


def sample_events() -> list[dict[str, object]]:
    return [
        lead(1),
        lead(2, source="partner", rep_id="bob"),
        lead(3, segment="enterprise"),
        {"event_id": "lq-1", "type": "lead.qualified", "occurred_at": at(25), "lead_id": "L1"},
        {
            "event_id": "dc-1",
            "type": "deal.created",
            "occurred_at": at(20),
            "deal_id": "D1",
            "lead_id": "L1",
            "rep_id": "alice",
            "amount": 12000,
        },
        {
            "event_id": "dc-2",
            "type": "deal.created",
            "occurred_at": at(19),
            "deal_id": "D2",
            "lead_id": "L2",
            "rep_id": "bob",
            "amount": 5000,
            "stage": "proposal",
        },
        {
            "event_id": "dw-1",
            "type": "deal.won",
            "occurred_at": at(10),
            "deal_id": "D1",
            "customer_id": "C1",
            "rep_id": "alice",
            "amount": 15000,
        },
        {
            "event_id": "sp-1",
            "type": "spend.recorded",
            "occurred_at": at(5),
            "amount": 3000,
            "category": "marketing",
            "source": "web",
        },
        {"event_id": "sv-1", "type": "survey.answered", "occurred_at": at(4), "kind": "nps", "score": 10},
    ]


def drive(
    settings: Settings, scenario: Scenario, publisher: Any = None, *, clear: bool = False, **app_options: Any
) -> None:
    """Run ``scenario(client, runtime)`` against create_app on a fresh runtime.

    ``clear``: delete the namespace afterwards; only scenarios that apply events write
    to Redis (ingest hands events to the publisher, never to the store), and a clear
    scans the whole keyspace of the shared test Redis.
    """

    async def main() -> None:
        runtime = build_runtime(settings)
        app = create_app(runtime, publisher=publisher, **app_options)
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://kpi.test"
            ) as client:
                await scenario(client, runtime)
        finally:
            try:
                if clear:
                    await runtime.store.clear()
            finally:
                await runtime.aclose()

    asyncio.run(main())


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(
        ingest_tokens="tok-a, tok-b", ingest_hmac_secret=SECRET, ingest_max_body_bytes=4096, message_batch=100
    )


def sign(body: bytes, secret: str = SECRET, timestamp: int | None = None) -> dict[str, str]:
    """The signature headers: HMAC-SHA256 over ``<timestamp>.<body>`` (default timestamp: now)."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    mac = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"X-Signature-Timestamp": stamp, "X-Signature-256": "sha256=" + mac}


# ---- POST /events ----


def test_single_event_and_batch_are_accepted_and_published(settings: Settings) -> None:
    pub = RecordingPublisher()
    events = sample_events()

    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        one = await client.post("/events", content=orjson.dumps(events[0]), headers=JSON)
        assert one.status_code == 202
        assert one.json() == {"accepted": 1, "rejected": [], "rejected_count": 0, "rejected_by_reason": {}}
        many = await client.post("/events", content=orjson.dumps(events[1:]), headers=JSON)
        assert many.status_code == 202
        assert many.json() == {
            "accepted": len(events) - 1,
            "rejected": [],
            "rejected_count": 0,
            "rejected_by_reason": {},
        }

    drive(settings, scenario, pub)
    assert pub.events == events  # the objects as received, in order
    assert [len(b) for b in pub.batches] == [1, len(events) - 1]


def test_valid_events_are_published_in_chunks_of_message_batch(
    make_settings: Callable[..., Settings],
) -> None:
    pub = RecordingPublisher()
    events = [lead(n) for n in range(5)]

    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        response = await client.post("/events", content=orjson.dumps(events), headers=JSON)
        assert response.status_code == 202

    drive(make_settings(ingest_tokens=TOKEN, message_batch=2), scenario, pub)
    assert [len(b) for b in pub.batches] == [2, 2, 1]
    assert pub.events == events


def test_mixed_batch_publishes_only_valid_events_and_names_each_bad_one(settings: Settings) -> None:
    pub = RecordingPublisher()
    registry = CollectorRegistry()
    ops = OpMetrics(registry)
    good_a, good_b = lead(1), lead(2)
    batch = [
        good_a,
        {
            "event_id": "x1",
            "type": "deal.won",
            "occurred_at": at(1),
            "deal_id": "D9",
            "rep_id": "r",
            "amount": 10,
        },  # customer_id missing
        7,  # not an object
        {"event_id": "x2", "type": "deal.exploded", "occurred_at": at(1)},  # unknown type
        good_b,
        {
            "event_id": "x3",
            "type": "spend.recorded",
            "occurred_at": at(1),
            "amount": -5,
            "category": "sales",
        },  # negative amount
        {
            "event_id": "x4",
            "type": "lead.created",
            "occurred_at": "2026-03-01T09:30:00",
            "lead_id": "L5",
        },  # naive timestamp
        {
            "event_id": "x5",
            "type": "deal.created",
            "occurred_at": at(1),
            "deal_id": "D5",
            "rep_id": "r",
            "amount": 5e12,
        },  # beyond the store's range
    ]

    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        response = await client.post("/events", content=orjson.dumps(batch), headers=JSON)
        assert response.status_code == 202
        body = response.json()
        assert body["accepted"] == 2
        got = {(r["index"], r["field"], r["reason"]) for r in body["rejected"]}
        assert got == {
            (1, "customer_id", "missing_field"),
            (2, None, "not_an_object"),
            (3, "type", "unknown_type"),
            (5, "amount", "negative_amount"),
            (6, "occurred_at", "naive_timestamp"),
            (7, "amount", "invalid_amount"),
        }
        assert all(isinstance(r["detail"], str) and r["detail"] for r in body["rejected"])

    drive(settings, scenario, pub, ops=ops)
    assert pub.events == [good_a, good_b]
    assert registry.get_sample_value("kpi_events_rejected_total", {"reason": "missing_field"}) == 1


def test_ndjson_lines_are_validated_one_by_one(settings: Settings) -> None:
    pub = RecordingPublisher()
    lines = [
        orjson.dumps(lead(1)),
        b"",
        b"{not json",
        orjson.dumps(lead(2)),
        b"  ",
        orjson.dumps({"event_id": "q", "type": "lead.qualified", "occurred_at": at(1)}),
    ]
    body = b"\n".join(lines) + b"\n"

    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        response = await client.post(
            "/events", content=body, headers={**JSON, "Content-Type": "application/x-ndjson; charset=utf-8"}
        )
        assert response.status_code == 202
        out = response.json()
        assert out["accepted"] == 2
        assert [(r["index"], r["line"], r["reason"], r["field"]) for r in out["rejected"]] == [
            (1, 3, "invalid_json", None),
            (3, 6, "missing_field", "lead_id"),
        ]

    drive(settings, scenario, pub)
    assert pub.events == [lead(1), lead(2)]


def test_missing_token_is_401_and_nothing_is_published(settings: Settings) -> None:
    pub = RecordingPublisher()

    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        response = await client.post(
            "/events", content=orjson.dumps(lead(1)), headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 401
        assert response.json()["error"] == "unauthorized"
        assert response.headers["www-authenticate"].startswith("Bearer")

    drive(settings, scenario, pub)
    assert pub.events == []


@pytest.mark.parametrize(
    "authorization",
    ["Bearer tok-c", "Bearer tok-", "Bearer ", "Basic dG9rLWI=", "tok-b", "Bearer tok-b tok-a"],
)
def test_wrong_token_is_401_and_nothing_is_published(settings: Settings, authorization: str) -> None:
    pub = RecordingPublisher()

    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        response = await client.post(
            "/events", content=orjson.dumps(lead(1)), headers={**JSON, "Authorization": authorization}
        )
        assert response.status_code == 401
        assert response.json()["error"] == "unauthorized"

    drive(settings, scenario, pub)
    assert pub.events == []


def test_every_configured_token_is_accepted(settings: Settings) -> None:
    pub = RecordingPublisher()

    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        for n, token in enumerate(["tok-a", "tok-b"]):
            response = await client.post(
                "/events", content=orjson.dumps(lead(n)), headers={**JSON, "Authorization": f"bearer {token}"}
            )
            assert response.status_code == 202

    drive(settings, scenario, pub)
    assert len(pub.events) == 2


def test_signature_authenticates_and_a_bad_one_is_401(settings: Settings) -> None:
    pub = RecordingPublisher()
    body = orjson.dumps([lead(1), lead(2)])
    plain = {"Content-Type": "application/json"}

    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        ok = await client.post("/events", content=body, headers={**plain, **sign(body)})
        assert ok.status_code == 202
        assert ok.json()["accepted"] == 2
        good = sign(body)
        for bad in (
            sign(body, "other")["X-Signature-256"],
            sign(body + b" ")["X-Signature-256"],
            "sha1=" + good["X-Signature-256"][7:],
            "sha256=zz",
            "",
        ):
            response = await client.post(
                "/events", content=body, headers={**plain, **good, "X-Signature-256": bad}
            )
            assert response.status_code == 401, bad
        # A present but wrong signature is refused even with a valid token.
        both = await client.post("/events", content=body, headers={**JSON, **sign(body, "other")})
        assert both.status_code == 401

    drive(settings, scenario, pub)
    assert pub.events == [lead(1), lead(2)]


def test_ingest_without_token_or_secret_is_disabled(make_settings: Callable[..., Settings]) -> None:
    pub = RecordingPublisher()

    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        response = await client.post("/events", content=orjson.dumps(lead(1)), headers=JSON)
        assert response.status_code == 401
        assert response.json()["error"] == "ingest_disabled"
        assert "KPI_INGEST_TOKENS" in response.json()["message"]

    drive(make_settings(ingest_tokens="", ingest_hmac_secret=""), scenario, pub)
    assert pub.events == []


def test_too_large_body_is_413_and_nothing_is_published(settings: Settings) -> None:
    pub = RecordingPublisher()
    big = orjson.dumps([lead(n) for n in range(40)])
    assert len(big) > settings.ingest_max_body_bytes

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 500):
            yield big[start : start + 500]

    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        declared = await client.post("/events", content=big, headers=JSON)
        assert declared.status_code == 413
        assert declared.json() == {
            "error": "payload_too_large",
            "limit": 4096,
            "message": "the body is limited to 4096 bytes",
        }
        streamed = await client.post("/events", content=chunks(), headers=JSON)  # chunked: no Content-Length
        assert "content-length" not in streamed.request.headers
        assert streamed.status_code == 413

    drive(settings, scenario, pub)
    assert pub.events == []


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/xml",
        "multipart/form-data",
        "application/json; charset=latin-1",
        "application/jsonx",
    ],
)
def test_wrong_content_type_is_415(settings: Settings, content_type: str | None) -> None:
    pub = RecordingPublisher()

    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        response = await client.post("/events", content=orjson.dumps(lead(1)), headers=headers)
        assert response.status_code == 415
        assert response.json()["error"] == "unsupported_media_type"

    drive(settings, scenario, pub)
    assert pub.events == []


def test_nothing_valid_is_422_with_the_same_body_shape(settings: Settings) -> None:
    pub = RecordingPublisher()

    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        response = await client.post("/events", content=b'[{"type": "lead.created"}, "x"]', headers=JSON)
        assert response.status_code == 422
        body = response.json()
        assert body["error"] == "no_valid_events"
        assert body["accepted"] == 0
        assert [(r["index"], r["reason"]) for r in body["rejected"]] == [
            (0, "missing_field"),
            (1, "not_an_object"),
        ]
        empty = await client.post("/events", content=b"[]", headers=JSON)
        assert empty.status_code == 422
        assert empty.json()["rejected"] == []

    drive(settings, scenario, pub)
    assert pub.events == []


def test_unparseable_body_is_422_invalid_json(settings: Settings) -> None:
    pub = RecordingPublisher()

    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        for body in (b'{"event_id": ', b"", b"\xff\xfe", b"NaN", b"[1, 2"):
            response = await client.post("/events", content=body, headers=JSON)
            assert response.status_code == 422, body
            out = response.json()
            assert out["error"] == "invalid_json"
            assert out["rejected"][0]["reason"] == "invalid_json"

    drive(settings, scenario, pub)
    assert pub.events == []


def test_without_publisher_ingest_is_503(settings: Settings) -> None:
    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        response = await client.post("/events", content=orjson.dumps(lead(1)), headers=JSON)
        assert response.status_code == 503
        assert response.json()["error"] == "ingest_unavailable"
        # Authentication still comes first.
        anonymous = await client.post("/events", content=b"{}", headers={"Content-Type": "application/json"})
        assert anonymous.status_code == 401

    drive(settings, scenario, None)


def test_publisher_failure_is_503_and_reports_nothing_accepted(settings: Settings) -> None:
    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        response = await client.post("/events", content=orjson.dumps([lead(1)]), headers=JSON)
        assert response.status_code == 503
        body = response.json()
        assert body["error"] == "publish_failed"
        assert "accepted" not in body

    drive(settings, scenario, RecordingPublisher(fail=True))


@pytest.mark.parametrize(
    "body",
    [
        b"null",
        b"0",
        b'"lead"',
        b"[[]]",
        b"[null, {}]",
        b'{"type": 5}',
        b'{"type": "lead.created", "occurred_at": 1}',
        b"[" * 4000,
        b'{"event_id": "e", "type": "deal.won", "amount": 1e400}',
        b'{"a": 123456789012345678901234567890}',
        '"\u2028"'.encode(),
    ],
)
def test_odd_bodies_are_answered_4xx_not_500(settings: Settings, body: bytes) -> None:
    pub = RecordingPublisher()

    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        response = await client.post("/events", content=body, headers=JSON)
        assert response.status_code == 422
        assert response.json()["accepted"] == 0

    drive(settings, scenario, pub)
    assert pub.events == []


# ---- GET /api/kpis ----


async def apply_events(runtime: Runtime, events: Sequence[Mapping[str, object]]) -> None:
    parsed = [runtime.parser.parse_object(dict(e), NOW) for e in events]
    assert not any(isinstance(p, Rejection) for p in parsed)
    result = await runtime.store.apply(parsed)  # type: ignore[arg-type]
    assert result.applied == len(events)


def test_api_kpis_is_the_reader_document(settings: Settings) -> None:
    as_of = NOW + timedelta(seconds=1)

    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        await apply_events(runtime, sample_events())
        response = await client.get("/api/kpis", params={"as_of": as_of.isoformat()})
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        expected = orjson.loads(orjson.dumps(await runtime.reader.document(as_of)))
        assert response.json() == expected
        total = expected["windows"]["30d"]["total"]
        assert (total["leads"], total["deals_won"], total["revenue_won"]) == (3, 1, 15000.0)
        # Without as_of: evaluated now (same numbers: all events are in the past hour).
        now_doc = (await client.get("/api/kpis")).json()
        assert now_doc["windows"]["30d"] == expected["windows"]["30d"]

    drive(settings, scenario, clear=True)


def test_api_kpis_window_and_by_filters(settings: Settings) -> None:
    as_of = NOW.isoformat()

    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        await apply_events(runtime, sample_events())
        full = orjson.loads(orjson.dumps(await runtime.reader.document(NOW)))
        one = (await client.get("/api/kpis", params={"window": "30d", "as_of": as_of})).json()
        assert list(one["windows"]) == ["30d"]
        assert one["windows"]["30d"] == full["windows"]["30d"]
        assert one["current"] == full["current"]
        two = (await client.get("/api/kpis", params={"window": "1h,all", "as_of": as_of})).json()
        assert sorted(two["windows"]) == ["1h", "all"]
        by_rep = (await client.get("/api/kpis", params={"window": "7d", "by": "rep", "as_of": as_of})).json()
        assert sorted(by_rep["windows"]["7d"]) == ["by_rep", "total"]
        assert by_rep["windows"]["7d"]["by_rep"] == full["windows"]["7d"]["by_rep"]
        assert sorted(by_rep["windows"]["7d"]["by_rep"]) == ["alice", "bob"]
        both = (await client.get("/api/kpis", params={"by": "source,segment", "as_of": as_of})).json()
        assert all(sorted(w) == ["by_segment", "by_source", "total"] for w in both["windows"].values())
        only_total = (await client.get("/api/kpis", params={"by": "total", "as_of": as_of})).json()
        assert all(list(w) == ["total"] for w in only_total["windows"].values())

    drive(settings, scenario, clear=True)


def test_api_kpis_calendar_windows(settings: Settings) -> None:
    """?window= takes the calendar windows too (DESIGN section 3): this hour's events are in
    today..ytd and in none of the previous periods."""
    as_of = NOW.isoformat()
    calendar = "today,mtd,qtd,ytd,mtd_prev,qtd_prev,ytd_prev"

    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        await apply_events(runtime, sample_events())
        full = orjson.loads(orjson.dumps(await runtime.reader.document(NOW)))
        got = (await client.get("/api/kpis", params={"window": calendar, "as_of": as_of, "by": "rep"})).json()
        assert list(got["windows"]) == calendar.split(",")
        today = NOW.date()  # UTC is the business timezone here
        starts = {
            "today": today,
            "mtd": today.replace(day=1),
            "qtd": today.replace(day=1, month=(today.month - 1) // 3 * 3 + 1),
            "ytd": today.replace(day=1, month=1),
        }
        leads_day = (NOW - timedelta(minutes=30)).date()  # the three leads (lead())
        for name, start in starts.items():
            assert got["windows"][name]["total"]["leads"] == (3 if leads_day >= start else 0), name
            assert got["windows"][name]["by_rep"] == full["windows"][name]["by_rep"]
        for name in ("mtd_prev", "qtd_prev", "ytd_prev"):
            assert got["windows"][name]["total"]["leads"] == 0, name
            assert got["windows"][name]["by_rep"] == {}
        for name in calendar.split(","):  # each alone reads only its own buckets
            alone = (await client.get("/api/kpis", params={"window": name, "as_of": as_of})).json()
            assert alone["windows"] == {name: full["windows"][name]}

    drive(settings, scenario, clear=True)


@pytest.mark.parametrize(
    "params",
    [
        {"as_of": "yesterday"},
        {"as_of": "2026-03-01T00:00:00"},
        {"as_of": "2026-03-01"},
        {"window": "2d"},
        {"window": "30d,5m"},
        {"by": "region"},
    ],
)
def test_api_kpis_bad_parameters_are_400(settings: Settings, params: dict[str, str]) -> None:
    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        response = await client.get("/api/kpis", params=params)
        assert response.status_code == 400
        assert response.json()["error"] == "bad_request"

    drive(settings, scenario)


# ---- health, metrics, pages ----


def test_health_answers_when_redis_does(settings: Settings) -> None:
    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        for path in ("/api/health", "/healthz"):
            response = await client.get(path)
            assert response.status_code == 200
            assert response.json() == {"status": "ok", "redis": True}

    drive(settings, scenario)


def test_health_is_503_when_redis_is_down(make_settings: Callable[..., Settings]) -> None:
    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        response = await client.get("/api/health")
        assert response.status_code == 503
        assert response.json() == {"status": "unavailable", "redis": False}

    drive(make_settings(redis_url="redis://127.0.0.1:1/0"), scenario)


def test_metrics_hook(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[object, ...]] = []

    async def render_metrics(
        reader: object, settings: object, include: object, accept: str
    ) -> tuple[bytes, str]:
        calls.append((reader, settings, include, accept))
        return b'sales_leads{window="30d"} 3.0\n', "text/plain; version=0.0.4; charset=utf-8"

    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        monkeypatch.setattr(web, "render_metrics", render_metrics)
        response = await client.get("/metrics", headers={"Accept": "text/plain"})
        assert response.status_code == 200
        assert response.text.startswith("sales_leads")
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert calls == [(runtime.reader, runtime.settings, (), "text/plain")]

    drive(settings, scenario)


def test_wall_page_and_assets_are_served_by_the_app(settings: Settings) -> None:
    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        page = await client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert 'data-kpi="ltv_cac_ratio"' in page.text
        assert "http://" not in page.text and "https://" not in page.text  # no CDN, no external fonts
        for asset, kind in (("/static/wall.js", "javascript"), ("/static/wall.css", "text/css")):
            response = await client.get(asset)
            assert response.status_code == 200
            assert kind in response.headers["content-type"]
            assert "http://" not in response.text and "https://" not in response.text
        missing = await client.get("/static/nope.js")
        assert missing.status_code == 404
        assert missing.json()["error"] == "not_found"
        wrong_method = await client.get("/events")
        assert wrong_method.status_code == 405
        assert "POST" in wrong_method.headers["allow"]

    drive(settings, scenario)


def test_unexpected_errors_are_500_json(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*args: object, **kwargs: object) -> dict[str, Any]:
        raise RuntimeError("boom")

    async def scenario(client: httpx.AsyncClient, runtime: Runtime) -> None:
        monkeypatch.setattr(runtime.reader, "document", broken)
        response = await client.get("/api/kpis")
        assert response.status_code == 500
        assert response.json()["error"] == "internal_error"
        assert "boom" not in response.text
        assert (await client.get("/api/health")).status_code == 200  # and the app carries on

    drive(settings, scenario)
