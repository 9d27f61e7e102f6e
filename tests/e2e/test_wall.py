"""The live wall page in a real browser: events posted to POST /events show up on the
tiles, as /api/kpis says, without a reload.

The app runs under uvicorn in a background thread against the real Redis. Its
publisher is ``ApplyingPublisher``, which parses and applies events straight to the
store: it stands in for the Kafka -> worker hop IN THIS TEST ONLY (the broker path
has its own end-to-end test). Screenshots land in tests/e2e/artifacts/.
"""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from kpi_app.bootstrap import Runtime, build_runtime
from kpi_app.web import create_app
from kpi_state.events import Rejection
from kpi_state.settings import Settings
from tests.e2e.browser import Page, find_chromium, open_page

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).parent / "artifacts"
TOKEN = "e2e-token"
TILES = (
    "leads",
    "conversion_rate",
    "win_rate",
    "revenue_won",
    "new_customers",
    "avg_deal_size",
    "sales_cycle_days",
    "cac",
    "ltv_cac_ratio",
    "nps",
)
FUNNEL = ("leads", "qualified_leads", "deals_created", "deals_won")
DAY = timedelta(days=1)

# What the page shows, read from its data-* attributes (raw JSON values).
PAGE_STATE = """(() => {
  const v = (el, attr = "value") =>
    (el && el.dataset[attr] !== undefined ? JSON.parse(el.dataset[attr]) : "absent");
  const all = (sel) => Array.from(document.querySelectorAll(sel));
  const text = (sel) =>
    Object.fromEntries(all("[data-kpi]").map((t) => [t.dataset.kpi, t.querySelector(sel).textContent]));
  const field = (tr, name) => v(tr.querySelector(`[data-field="${name}"]`));
  // Text wider than its box. Table cells report no overflow when they show an ellipsis,
  // so their text is measured in an unconstrained copy inside the cell (same font).
  const over = (e) => {
    if (e.tagName === "TD") {
      const copy = document.createElement("span");
      copy.style.cssText = "position: absolute; visibility: hidden; white-space: nowrap";
      copy.textContent = e.textContent;
      e.append(copy);
      const width = copy.getBoundingClientRect().width;
      copy.remove();
      const style = getComputedStyle(e);
      return width > e.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight) + 0.01;
    }
    return e.scrollWidth > e.clientWidth + 1 || e.scrollHeight > e.clientHeight + 1;
  };
  return {
    marker: window.__e2eMarker || null,
    status: document.body.dataset.status,
    updates: Number(document.body.dataset.updates),
    window: document.body.dataset.window || null,
    asOf: document.body.dataset.asOf || null,
    tiles: Object.fromEntries(all("[data-kpi]").map((t) => [t.dataset.kpi, v(t)])),
    prev: Object.fromEntries(all("[data-kpi]").map((t) => [t.dataset.kpi, v(t, "prev")])),
    text: text(".value"),
    deltas: text(".delta"),
    // Optional: wait_for() may look before the page has loaded.
    ltvLevel: document.querySelector('[data-kpi="ltv_cac_ratio"]')?.dataset.level ?? null,
    funnel: Object.fromEntries(all("[data-funnel]").map((li) => [li.dataset.funnel, v(li)])),
    leaders: all("#leaders tr").map((tr) =>
      [tr.dataset.rep, field(tr, "revenue_won"), field(tr, "new_customers")]),
    stages: Object.fromEntries(all("#pipeline tr").map((tr) => [tr.dataset.stage,
      {open_deals: field(tr, "open_deals"), value: field(tr, "value")}])),
    pipeline: Object.fromEntries(all("[data-pipeline]").map((e) => [e.dataset.pipeline, v(e)])),
    overflowing: all(".tile .value, .tile h2, .delta, .panel, td, .totals .v, .bar")
      .filter(over).map((e) => `${e.className || e.tagName} ${e.textContent.slice(0, 20)} `
        + `${e.scrollWidth}x${e.scrollHeight} > ${e.clientWidth}x${e.clientHeight}`),
    scrolls: document.documentElement.scrollHeight > innerHeight
      || document.documentElement.scrollWidth > innerWidth,
    viewport: [innerWidth, innerHeight],
  };
})()"""


class ApplyingPublisher:
    """TEST-ONLY stand-in for Kafka + the worker: validate and apply each chunk to Redis."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    async def publish(self, events: Sequence[Mapping[str, object]]) -> None:
        now = datetime.now(UTC)
        parsed = [self._runtime.parser.parse_object(dict(e), now) for e in events]
        await self._runtime.store.apply([p for p in parsed if not isinstance(p, Rejection)])


class ServerThread:
    """``create_app`` under uvicorn on a free port, in a thread with its own event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: uvicorn.Server | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _serve(self) -> None:
        runtime = build_runtime(self.settings)
        app = create_app(runtime, publisher=ApplyingPublisher(runtime))
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off", ws="none", http="h11"
        )
        self._server = uvicorn.Server(config)
        try:
            await self._server.serve()
        finally:
            try:
                await runtime.store.clear()
            finally:
                await runtime.aclose()

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not (self._server and self._server.started):
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the app did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        self._thread.join(timeout=30)


def crm_history(
    rng: random.Random, now: datetime, prefix: str, first: timedelta, last: timedelta, leads: int
) -> list[dict[str, object]]:
    """A plausible CRM history with occurred_at between ``now - first`` and ``now - last``."""
    reps = ["alice", "bruno", "chen", "dana", "emeka", "farah", "goran", "hana", "ivan"]
    stages = ["qualification", "proposal", "negotiation"]
    cap = now - timedelta(minutes=2)
    out: list[dict[str, object]] = []

    def add(event_type: str, when: datetime, **fields: object) -> None:
        when = min(when, cap)
        out.append(
            {
                "event_id": f"{prefix}-{len(out)}",
                "type": event_type,
                "occurred_at": when.isoformat().replace("+00:00", "Z"),
                **fields,
            }
        )

    span = (first - last).total_seconds()
    for i in range(leads):
        t0 = now - first + timedelta(seconds=rng.uniform(0, span))
        rep = rng.choice(reps[: 3 + i % 7])  # some reps busier than others
        lead = f"{prefix}-L{i}"
        add(
            "lead.created",
            t0,
            lead_id=lead,
            rep_id=rep,
            source=rng.choice(["web", "partner", "event", "outbound"]),
            segment=rng.choice(["smb", "mid", "enterprise"]),
        )
        if rng.random() > 0.6:
            continue
        add("lead.qualified", t0 + timedelta(hours=rng.uniform(1, 30)), lead_id=lead)
        if rng.random() > 0.65:
            continue
        deal, created = f"{prefix}-D{i}", t0 + timedelta(days=rng.uniform(1, 3))
        amount = float(rng.randrange(20, 400) * 100)
        add("deal.created", created, deal_id=deal, lead_id=lead, rep_id=rep, amount=amount)
        when = created
        for stage in stages[: rng.randrange(0, 4)]:
            when += timedelta(days=rng.uniform(0.5, 2))
            add("deal.stage_changed", when, deal_id=deal, to_stage=stage)
        outcome = rng.random()
        if outcome < 0.5:
            add(
                "deal.won",
                when + DAY * rng.uniform(1, 6),
                deal_id=deal,
                customer_id=f"{prefix}-C{i}",
                rep_id=rep,
                lead_id=lead,
                amount=amount,
            )
            add(
                "revenue.recorded",
                when + DAY * 7,
                customer_id=f"{prefix}-C{i}",
                amount=amount / 10,
                gross_margin=0.7,
            )
        elif outcome < 0.75:
            add("deal.lost", when + DAY * rng.uniform(1, 6), deal_id=deal, rep_id=rep, lead_id=lead)
    for day in range(int(first / DAY) - int(last / DAY)):
        start = now - first + DAY * day
        add(
            "spend.recorded",
            start + DAY / 2,
            amount=float(rng.randrange(8, 20) * 100),
            category="marketing",
            source=rng.choice(["web", "event"]),
        )
        add("spend.recorded", start + DAY / 3, amount=400.0, category="sales")
    for n in range(30):
        add(
            "survey.answered",
            now - first + timedelta(seconds=rng.uniform(0, span)),
            kind="nps",
            score=rng.choice([10, 10, 9, 9, 8, 7, 6, 3]),
            customer_id=f"{prefix}-S{n}",
        )
    add("customer.churned", now - last - DAY, customer_id=f"{prefix}-C0")
    return out


def expected_view(doc: dict[str, Any], window: str) -> dict[str, Any]:
    """What the page must show for ``doc`` (GET /api/kpis) in ``window``."""
    win = doc["windows"][window]
    total = win["total"]
    by_rep = sorted(
        win["by_rep"].items(), key=lambda kv: (-kv[1]["revenue_won"], -kv[1]["new_customers"], kv[0])
    )
    pipeline = doc["current"]["pipeline"]
    return {
        "tiles": {k: total[k] for k in TILES},
        "funnel": {k: total[k] for k in FUNNEL},
        "leaders": [[rep, k["revenue_won"], k["new_customers"]] for rep, k in by_rep[:8]],
        "stages": pipeline["by_stage"],
        "pipeline": {k: pipeline[k] for k in ("open_deals", "value", "weighted_value")},
    }


def ltv_level(ratio: float | None) -> str:
    """LTV:CAC colour: green >= 3, amber 1-3, red < 1."""
    if ratio is None:
        return "none"
    return "good" if ratio >= 3 else "warn" if ratio >= 1 else "bad"


def shown(state: dict[str, Any]) -> dict[str, Any]:
    return {k: state[k] for k in ("tiles", "funnel", "leaders", "stages", "pipeline")}


async def wait_for(page: Page, predicate: Any, what: str, seconds: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        try:
            state: dict[str, Any] = await page.evaluate(PAGE_STATE)
        except RuntimeError as exc:  # the document is not there yet (navigation under way)
            state = {"not_loaded": str(exc)}
        else:
            if predicate(state):
                return state
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; page state: {state}")
        await asyncio.sleep(0.25)


@pytest.fixture
def chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium, or set KPI_TEST_CHROMIUM)")
    return path


@pytest.fixture
def server(make_settings: Any) -> Iterator[ServerThread]:
    srv = ServerThread(make_settings(ingest_tokens=TOKEN))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_wall_tracks_the_api_live(chromium: str, server: ServerThread) -> None:
    now = datetime.now(UTC)
    rng = random.Random(20260301)
    api = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)

    def post(events: list[dict[str, object]]) -> None:
        for start in range(0, len(events), 250):
            response = api.post("/events", json=events[start : start + 250])
            assert response.status_code == 202, response.text
            assert response.json()["rejected"] == []

    def kpis(**params: str) -> dict[str, Any]:
        response = api.get("/api/kpis", params=params)
        assert response.status_code == 200
        doc: dict[str, Any] = response.json()
        return doc

    post(crm_history(rng, now, "prev", first=DAY * 58, last=DAY * 31, leads=90))
    post(crm_history(rng, now, "cur", first=DAY * 28, last=DAY * 0.5, leads=130))

    async def scenario() -> None:
        async with open_page(chromium) as page:
            await page.goto(server.url + "/")
            before = expected_view(kpis(window="30d", by="rep"), "30d")
            state = await wait_for(
                page, lambda s: s["updates"] >= 1 and shown(s) == before, "the first render"
            )
            await page.screenshot(ARTIFACTS / "wall-30d.png")
            assert state["viewport"] == [1920, 1080]
            assert state["status"] == "live"
            assert state["window"] == "30d"
            # The previous period: the same window, evaluated one window length earlier.
            prev_as_of = datetime.fromisoformat(state["asOf"]) - DAY * 30
            prev_total = kpis(window="30d", as_of=prev_as_of.isoformat())["windows"]["30d"]["total"]
            assert state["prev"] == {k: prev_total[k] for k in TILES}
            assert state["deltas"]["leads"][0] in "▲▼="
            assert state["text"]["win_rate"].endswith("%")
            assert state["ltvLevel"] == ltv_level(before["tiles"]["ltv_cac_ratio"])
            assert not state["overflowing"], state["overflowing"]
            assert not state["scrolls"]
            assert page.errors() == []

            # Live: post through the ingest, the page follows without a reload.
            await page.evaluate("window.__e2eMarker = 'same-page'")
            seen = state["updates"]
            t = (now - timedelta(minutes=1)).isoformat()
            post(
                [
                    {
                        "event_id": "live-1",
                        "type": "lead.created",
                        "occurred_at": t,
                        "lead_id": "live-L1",
                        "rep_id": "zoe",
                        "source": "web",
                    },
                    {
                        "event_id": "live-2",
                        "type": "deal.created",
                        "occurred_at": t,
                        "deal_id": "live-D1",
                        "lead_id": "live-L1",
                        "rep_id": "zoe",
                        "amount": 250000,
                    },
                    {
                        "event_id": "live-3",
                        "type": "deal.won",
                        "occurred_at": t,
                        "deal_id": "live-D1",
                        "customer_id": "live-C1",
                        "rep_id": "zoe",
                        "lead_id": "live-L1",
                        "amount": 250000,
                    },
                    {
                        "event_id": "live-4",
                        "type": "survey.answered",
                        "occurred_at": t,
                        "kind": "nps",
                        "score": 0,
                    },
                ]
            )
            after = expected_view(kpis(window="30d", by="rep"), "30d")
            assert after["tiles"]["leads"] == before["tiles"]["leads"] + 1
            state = await wait_for(page, lambda s: shown(s) == after, "the live update")
            assert state["marker"] == "same-page" and state["updates"] > seen  # polled, not reloaded
            assert state["leaders"][0][0] == "zoe"
            assert page.errors() == []
            await page.screenshot(ARTIFACTS / "wall-30d-live.png")

            # The window selector is remembered in the URL hash.
            await page.evaluate("location.hash = '#window=7d'")
            week = expected_view(kpis(window="7d", by="rep"), "7d")
            state = await wait_for(page, lambda s: s["window"] == "7d" and shown(s) == week, "the 7d window")
            assert await page.evaluate("location.hash") == "#window=7d"
            assert not state["overflowing"], state["overflowing"]
            await page.screenshot(ARTIFACTS / "wall-7d.png")

            # The API goes away: the page says so instead of showing old numbers as live.
            server.stop()
            await wait_for(page, lambda s: s["status"] == "stale", "the stale indicator", seconds=10)
            state = await wait_for(
                page, lambda s: s["status"] == "offline", "the offline indicator", seconds=20
            )
            assert state["marker"] == "same-page"
            await page.screenshot(ARTIFACTS / "wall-offline.png")

    try:
        asyncio.run(scenario())
    finally:
        api.close()
