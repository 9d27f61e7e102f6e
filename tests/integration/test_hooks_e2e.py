"""Signed HubSpot batches and Pipedrive deliveries sent to `kpi serve`, translated by
`kpi hooks-worker` and applied by `kpi worker`, through the embedded broker, into Redis.

Must show (issue 11): with retries, a wrong signature, a stale timestamp, wrong basic auth and a
malformed body, the KPIs end as the payloads imply (created, won with amount and mapped owner,
lost, deleted, open pipeline by mapped stage), the bad requests are refused, and the unmapped
stage is a dead letter naming the stage.
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import pytest

from kpi_app.hooks_web import hubspot_signature
from kpi_state.settings import Settings
from streams.broker import EmbeddedBroker, free_port
from tests.integration.streaming_support import (
    CONVERGE_TIMEOUT,
    KPI,
    READY_TIMEOUT,
    Worker,
    cli_args,
    document,
    read_dead_letters,
    unique,
    wait_until,
)
from tests.integration.test_hooks_translate import MAPPING, hubspot_notifications, pipedrive_deliveries

pytestmark = pytest.mark.integration

SECRET = "hs-e2e-secret"
BASIC = "kpi:pd-e2e"


def start(args: list[str], env: dict[str, str], port: int, log: Path) -> Worker:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [*KPI, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **env},
        )
    return Worker(proc, port, log)


def signed(body: bytes, url: str, age_ms: int = 0, secret: str = SECRET) -> dict[str, str]:
    stamp = str(int(time.time() * 1000) - age_ms)
    return {
        "Content-Type": "application/json",
        "X-HubSpot-Request-Timestamp": stamp,
        "X-HubSpot-Signature-v3": hubspot_signature(secret, "POST", url, body, stamp),
    }


def basic(credentials: str = BASIC) -> dict[str, str]:
    token = base64.b64encode(credentials.encode()).decode()
    return {"Content-Type": "application/json", "Authorization": f"Basic {token}"}


def test_webhooks_through_serve_broker_and_workers(
    broker: EmbeddedBroker,
    tmp_path: Path,
    namespaces: Callable[..., Settings],
    workers: Callable[..., Worker],
) -> None:
    topic = unique("t")
    hooks_topic = unique("h")
    ns = namespaces(
        kafka_url=broker.url, topic=topic, consumer_group=unique("g"), hooks_topic=hooks_topic, **MAPPING
    )
    env = {f"KPI_{k.upper()}": v for k, v in MAPPING.items()}
    env.update(KPI_HOOKS_TOPIC=hooks_topic, KPI_HUBSPOT_APP_SECRET=SECRET, KPI_PIPEDRIVE_AUTH=BASIC)
    kpi_worker = workers(ns, env=env)
    common = ["--kafka-url", broker.url, "--topic", topic, *cli_args(ns)]
    hooks_port, serve_port = free_port(), free_port()
    group = ["--group", ns.consumer_group]
    hooks = start(
        ["hooks-worker", *common, *group, "--web-port", str(hooks_port)], env, hooks_port, tmp_path / "h.log"
    )
    serve_args = ["serve", "--port", str(serve_port), "--kafka-url", broker.url, *cli_args(ns)]
    server = start(serve_args, {**env, "KPI_TOPIC": topic}, serve_port, tmp_path / "s.log")
    try:
        kpi_worker.wait_ready()
        hooks.wait_ready()
        server.wait_ready(READY_TIMEOUT)
        url = f"{server.url}/hooks/hubspot"
        items = hubspot_notifications()
        statuses: list[tuple[str, int]] = []
        with httpx.Client(timeout=10) as client:
            # HubSpot: batches of 5, one sent twice as a retry (attemptNumber 1).
            for start_at in range(0, len(items), 5):
                body = orjson.dumps(items[start_at : start_at + 5])
                statuses.append(
                    ("hubspot", client.post(url, content=body, headers=signed(body, url)).status_code)
                )
            retry = orjson.dumps([{**item, "attemptNumber": 1} for item in items[:5]])
            statuses.append(
                ("retry", client.post(url, content=retry, headers=signed(retry, url)).status_code)
            )
            # Refused: a wrong signature, a stale timestamp, a malformed body.
            evil = orjson.dumps([{**items[5], "propertyValue": "closedlost"}])
            wrong = client.post(url, content=evil, headers=signed(evil, url, secret="guess"))
            stale = client.post(url, content=evil, headers=signed(evil, url, age_ms=6 * 60 * 1000))
            broken = client.post(url, content=b"[{", headers=signed(b"[{", url))
            # Pipedrive: every delivery, the first one again (a retry), wrong auth, malformed.
            pd_url = f"{server.url}/hooks/pipedrive"
            deliveries = pipedrive_deliveries()
            for delivery in [*deliveries, deliveries[0]]:
                response = client.post(pd_url, content=orjson.dumps(delivery), headers=basic())
                statuses.append(("pipedrive", response.status_code))
            forged = {**deliveries[1], "meta": {**deliveries[1]["meta"], "id": "forged"}}
            wrong_auth = client.post(pd_url, content=orjson.dumps(forged), headers=basic("kpi:nope"))
            pd_broken = client.post(pd_url, content=b"meta=1", headers=basic())
        assert all(code == 200 for _, code in statuses), statuses
        assert (wrong.status_code, stale.status_code, broken.status_code) == (401, 401, 400)
        assert (wrong_auth.status_code, pd_broken.status_code) == (401, 400)

        def settled() -> bool:
            total = document(ns, datetime.now(UTC))["windows"]["24h"]["total"]
            return (total["deals_created"], total["deals_won"], total["deals_lost"]) == (5, 2, 1)

        wait_until(settled, CONVERGE_TIMEOUT, "the KPIs of the webhooks", kpi_worker)
        time.sleep(1.0)  # anything still in flight (it must change nothing)
        doc = document(ns, datetime.now(UTC))
        total = doc["windows"]["24h"]["total"]
        assert (total["deals_created"], total["deals_won"], total["deals_lost"]) == (5, 2, 1)
        assert total["revenue_won"] == 3500.0
        by_rep = doc["windows"]["24h"]["by_rep"]
        assert (
            by_rep["alice"]["revenue_won"],
            by_rep["bob"]["revenue_won"],
            by_rep["102"]["deals_lost"],
        ) == (
            1500.0,
            2000.0,
            1,
        )
        stages = doc["current"]["pipeline"]["by_stage"]
        assert stages["proposal"] == {"open_deals": 1, "value": 300.0}
        assert stages["prospecting"]["open_deals"] == 1
        assert doc["current"]["pipeline"]["open_deals"] == 2
        letters = asyncio.run(read_dead_letters(broker.bootstrap, ns.dlq_topic, 1, within=10))
        unmapped = [(value, h) for value, h in letters if h.get("dlq.reason") == "unmapped_stage"]
        assert len(unmapped) == 1 and "999" in unmapped[0][1]["dlq.detail"]
        assert orjson.loads(unmapped[0][0])["propertyValue"] == "999"
        assert unmapped[0][1]["dlq.topic"] == hooks_topic
        hooks_metrics = hooks.metrics()
        assert hooks_metrics['kpi_events_rejected_total{reason="unmapped_stage"}'] == 1.0
        assert hooks_metrics['kpi_hooks_payloads_total{vendor="pipedrive"}'] == 5.0
        metrics = kpi_worker.metrics()
        duplicates = sum(v for k, v in metrics.items() if k.startswith("kpi_events_duplicate_total"))
        assert duplicates >= 5  # the retried batch and delivery
    finally:
        for process in (server, hooks):
            process.stop()
