"""The wall's calendar periods and quota row in a real browser: MTD tiles with deltas against
mtd_prev, today against yesterday, and the targets of /api/kpis as attainment bars."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.e2e.browser import open_page
from tests.e2e.test_wall import (  # noqa: F401  (chromium and server are fixtures)
    ARTIFACTS,
    DAY,
    PAGE_STATE,
    TILES,
    TOKEN,
    ServerThread,
    chromium,
    crm_history,
    expected_view,
    server,
    shown,
    wait_for,
)

pytestmark = pytest.mark.e2e

# The quota row as the page shows it, and anything in it wider than its box.
QUOTA_STATE = """(() => {
  const all = (sel) => Array.from(document.querySelectorAll(sel));
  return {
    hidden: document.getElementById("quota").hidden,
    targets: all("#quota [data-target]").map((e) => [e.dataset.target, JSON.parse(e.dataset.attainment),
      JSON.parse(e.dataset.elapsed), e.dataset.status, e.parentElement.id]),
    overflowing: all(".target .label, .target .figure, .quota-team, .quota-reps, .bar a")
      .filter((e) => e.scrollWidth > e.clientWidth + 1 || e.scrollHeight > e.clientHeight + 1)
      .map((e) => `${e.className || e.tagName} ${e.textContent.slice(0, 20)}`),
  };
})()"""


def test_wall_calendar_periods_and_quota_row(chromium: str, server: ServerThread) -> None:  # noqa: F811
    now = datetime.now(UTC)
    rng = random.Random(20261130)
    api = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)

    def kpis(**params: str) -> dict[str, Any]:
        response = api.get("/api/kpis", params=params)
        assert response.status_code == 200
        doc: dict[str, Any] = response.json()
        return doc

    for events in (
        crm_history(rng, now, "prev", first=DAY * 58, last=DAY * 31, leads=90),
        crm_history(rng, now, "cur", first=DAY * 28, last=timedelta(hours=2), leads=130),
    ):
        for start in range(0, len(events), 250):
            assert api.post("/events", json=events[start : start + 250]).status_code == 202
    month = f"{now:%Y-%m}"
    reps = ["alice", "bruno", "chen", "dana", "emeka", "farah", "goran", "hana", "ivan"]
    targets = [
        {"kpi": "revenue_won", "period": month, "scope": "total", "value": 400000},
        {"kpi": "deals_won", "period": month, "scope": "total", "value": 30},
        *({"kpi": "revenue_won", "period": month, "scope": f"rep:{r}", "value": 20000 + 5000 * i}
          for i, r in enumerate(reps)),
    ]  # fmt: skip
    assert api.put("/api/targets", json=targets).status_code == 200

    async def scenario() -> None:
        async with open_page(chromium) as page:
            await page.goto(server.url + "/#window=mtd")
            doc = kpis(window="mtd,mtd_prev", by="rep")
            want = expected_view(doc, "mtd")
            state = await wait_for(
                page, lambda s: s["window"] == "mtd" and shown(s) == want, "the MTD render"
            )
            assert state["prev"] == {k: doc["windows"]["mtd_prev"]["total"][k] for k in TILES}
            assert not state["overflowing"], state["overflowing"]
            assert not state["scrolls"]
            quota = await page.evaluate(QUOTA_STATE)
            evaluated = {f"{t['kpi']}|{t['period']}|{t['scope']}": t for t in doc["targets"]}
            team = [[k, t["attainment"], t["elapsed"], t["status"] or "none", "quota-team"]
                    for k, t in evaluated.items() if t["scope"] == "total"]  # fmt: skip
            reps_shown = sorted(
                (t for t in evaluated.values() if t["scope"].startswith("rep:")),
                key=lambda t: -t["attainment"],
            )[:8]
            assert quota["hidden"] is False
            assert quota["targets"] == team + [
                [
                    f"{t['kpi']}|{t['period']}|{t['scope']}",
                    t["attainment"],
                    t["elapsed"],
                    t["status"],
                    "quota-reps",
                ]
                for t in reps_shown
            ]
            await page.screenshot(ARTIFACTS / "wall-mtd-quota.png")
            assert quota["overflowing"] == []

            # Today: compared with the same window one day earlier.
            await page.evaluate("location.hash = '#window=today'")
            today = expected_view(kpis(window="today", by="rep"), "today")
            state = await wait_for(
                page, lambda s: s["window"] == "today" and shown(s) == today, "the Today render"
            )
            yesterday = datetime.fromisoformat(state["asOf"]) - DAY
            prev = kpis(window="today", as_of=yesterday.isoformat())["windows"]["today"]["total"]
            assert state["prev"] == {k: prev[k] for k in TILES}
            assert page.errors() == []

    try:
        asyncio.run(scenario())
    finally:
        api.close()
