"""The wall page's alert banner against a real Alertmanager (DESIGN section 9, issue 13 part 5).

Debian's ``prometheus-alertmanager`` runs as a child process on a free port, with a
throwaway config and storage path and clustering off. Alerts are posted through its API
v2 (``POST /api/v2/alerts``), as Prometheus does; ``kpi serve``'s app (uvicorn in a thread,
``tests.e2e.test_wall.ServerThread``) reads them back through ``GET /api/alerts``, and a
headless Chromium shows them on the wall page.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from kpi_app import alerts_feed
from streams.broker import free_port
from tests.e2e.browser import Page, open_page
from tests.e2e.test_wall import (  # noqa: F401  (chromium is a fixture)
    ARTIFACTS,
    ServerThread,
    chromium,
)

pytestmark = pytest.mark.e2e

ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
MISSING = (
    "prometheus-alertmanager is not installed: run `make deps` (apt-get install prometheus-alertmanager)"
)
START_SECONDS = 20.0
VIEW_KEY = "wall-screen-key"

STARTED = datetime(2026, 11, 30, 9, 15, tzinfo=UTC)
SALES_ALERT: dict[str, Any] = {
    "labels": {
        "alertname": "SalesQualificationRateDropped",
        "area": "sales",
        "severity": "warning",
        "window": "24h",
        "scope": "source",
        "source": "web",
    },
    "annotations": {
        "summary": "Lead qualification rate dropped for source web",
        "description": (
            "Qualified leads / leads over the last 24h: 10% (10 of 100 leads), against 30% over "
            "the 29 days before (3000 leads); z = -4.4."
        ),
        "look_at": "Look at the forms, campaigns and landing pages feeding source web.",
    },
}
STAGE_ALERT: dict[str, Any] = {
    "labels": {
        "alertname": "SalesStageConversionDropped",
        "area": "sales",
        "severity": "warning",
        "window": "24h",
        "scope": "total",
        "stage": "proposal",
    },
    "annotations": {"summary": "Stage conversion from stage proposal dropped in total"},
}
PIPELINE_ALERT: dict[str, Any] = {  # not a sales alert: never on the wall
    "labels": {"alertname": "KpiNoEventsReceived", "area": "pipeline", "severity": "critical"},
    "annotations": {"summary": "No CRM event has been applied to the KPI state for 15 minutes"},
}

BANNER_STATE = """(() => {
  const box = document.querySelector("#alerts");
  return {
    hidden: box.hidden,
    visible: !box.hidden && box.getBoundingClientRect().height > 0,
    text: box.textContent,
    rows: Array.from(box.querySelectorAll(".alert")).map((a) => ({
      alert: a.dataset.alert, where: a.dataset.where, since: a.dataset.since,
      what: a.querySelector(".what").textContent, detail: a.querySelector(".detail").textContent,
    })),
    updates: Number(document.body.dataset.updates),
    pageWider: document.documentElement.scrollWidth > window.innerWidth,
    sinceShown: Array.from(box.querySelectorAll(".since")).every(
      (e) => e.getBoundingClientRect().right <= window.innerWidth && e.getBoundingClientRect().width > 0),
  };
})()"""


class Alertmanager:
    def __init__(self, binary: str, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "alertmanager.yml"
        config.write_text(yaml.safe_dump({"route": {"receiver": "null"}, "receivers": [{"name": "null"}]}))
        self.log = workdir / "alertmanager.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--cluster.listen-address=",  # a single instance: no gossip port
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_SECONDS
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"alertmanager exited with {self.proc.returncode}: {self.log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/-/ready", timeout=1.0).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"alertmanager not ready after {START_SECONDS} s: {self.log.read_text()}")
            time.sleep(0.1)

    def post(self, *alerts: dict[str, Any], starts_at: datetime = STARTED) -> None:
        ends = datetime.now(UTC) + timedelta(hours=1)
        body = [
            {**a, "startsAt": starts_at.isoformat().replace("+00:00", "Z"), "endsAt": ends.isoformat()}
            for a in alerts
        ]
        response = httpx.post(f"{self.url}/api/v2/alerts", json=body, timeout=5.0)
        assert response.status_code == 200, response.text

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[Alertmanager]:
    if ALERTMANAGER is None:
        pytest.fail(MISSING, pytrace=False)
    am = Alertmanager(ALERTMANAGER, tmp_path)
    try:
        am.wait_ready()
        yield am
    finally:
        am.stop()


@contextlib.contextmanager
def serving(make_settings: Any, **overrides: Any) -> Iterator[ServerThread]:
    srv = ServerThread(make_settings(**overrides))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _alerts(srv: ServerThread, **params: str) -> httpx.Response:
    return httpx.get(f"{srv.url}/api/alerts", params=params, timeout=10.0)


def test_api_alerts_lists_the_firing_sales_alerts(alertmanager: Alertmanager, make_settings: Any) -> None:
    alertmanager.post(SALES_ALERT, PIPELINE_ALERT)
    alertmanager.post(STAGE_ALERT, starts_at=STARTED + timedelta(minutes=5))
    with serving(make_settings, alertmanager_url=alertmanager.url, view_keys=VIEW_KEY) as srv:
        assert _alerts(srv).status_code == 401  # same read guard as /api/kpis
        response = _alerts(srv, key=VIEW_KEY)
        assert response.status_code == 200, response.text
        assert response.headers["cache-control"] == "no-store"
        assert response.json() == {
            "enabled": True,
            "available": True,
            "total": 2,
            "alerts": [
                {
                    "alertname": "SalesQualificationRateDropped",
                    "severity": "warning",
                    "scope": "source",
                    "where": "source web",
                    "summary": SALES_ALERT["annotations"]["summary"],
                    "description": SALES_ALERT["annotations"]["description"],
                    "look_at": SALES_ALERT["annotations"]["look_at"],
                    "starts_at": "2026-11-30T09:15:00Z",
                },
                {
                    "alertname": "SalesStageConversionDropped",
                    "severity": "warning",
                    "scope": "total",
                    "where": "total, stage proposal",
                    "summary": STAGE_ALERT["annotations"]["summary"],
                    "description": "",
                    "look_at": "",
                    "starts_at": "2026-11-30T09:20:00Z",
                },
            ],
        }


def test_api_alerts_is_cached_briefly(alertmanager: Alertmanager, make_settings: Any) -> None:
    with serving(make_settings, alertmanager_url=alertmanager.url) as srv:
        assert _alerts(srv).json()["alerts"] == []
        alertmanager.post(SALES_ALERT)
        assert _alerts(srv).json()["alerts"] == [], "answered again within CACHE_SECONDS"
        time.sleep(alerts_feed.CACHE_SECONDS + 0.5)
        assert [a["alertname"] for a in _alerts(srv).json()["alerts"]] == ["SalesQualificationRateDropped"]


def test_api_alerts_without_or_with_an_unreachable_alertmanager(make_settings: Any) -> None:
    with serving(make_settings) as srv:
        assert _alerts(srv).json() == {"enabled": False, "available": False, "total": 0, "alerts": []}
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with serving(make_settings, alertmanager_url=closed) as srv:
        response = _alerts(srv)
        assert response.status_code == 200
        assert response.json() == {"enabled": True, "available": False, "total": 0, "alerts": []}
        assert httpx.get(f"{srv.url}/api/kpis?window=24h", timeout=10.0).status_code == 200


async def _wait_banner(page: Page, predicate: Any, what: str, seconds: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(RuntimeError):  # the document is not there yet
            state = await page.evaluate(BANNER_STATE)
            if predicate(state):
                return state
        await asyncio.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}; banner: {state}")


def test_wall_shows_the_banner(alertmanager: Alertmanager, make_settings: Any, chromium: str) -> None:  # noqa: F811
    alertmanager.post(SALES_ALERT, PIPELINE_ALERT)
    with serving(make_settings, alertmanager_url=alertmanager.url) as srv:

        async def scenario() -> None:
            async with open_page(chromium) as page:
                await page.goto(f"{srv.url}/")
                state = await _wait_banner(page, lambda s: s["visible"] and s["rows"], "the banner")
                await page.screenshot(ARTIFACTS / "wall-alert-banner.png")
                assert [r["alert"] for r in state["rows"]] == ["SalesQualificationRateDropped"]
                (row,) = state["rows"]
                assert row["where"] == "source web"
                assert row["since"] == "2026-11-30T09:15:00Z"
                assert row["what"] == "⚠ Lead qualification rate dropped for source web"
                assert row["detail"] == SALES_ALERT["annotations"]["description"]
                assert "since" in state["text"]
                assert not state["pageWider"], "the banner widens the page"
                assert state["sinceShown"], "the banner's 'since' is cut off"
                assert "KpiNoEventsReceived" not in state["text"]
                assert "No CRM event" not in state["text"]
                assert page.errors() == []

        asyncio.run(scenario())


def test_wall_hides_the_banner_when_alertmanager_is_unreachable(make_settings: Any, chromium: str) -> None:  # noqa: F811
    closed = f"http://127.0.0.1:{free_port()}"
    with serving(make_settings, alertmanager_url=closed) as srv:

        async def scenario() -> None:
            async with open_page(chromium) as page:
                await page.goto(f"{srv.url}/")
                # The KPIs load (a few polls) while the banner stays hidden.
                state = await _wait_banner(page, lambda s: s["updates"] >= 2, "the KPIs to load")
                assert state["hidden"] and not state["visible"]
                assert page.errors() == []

        asyncio.run(scenario())
