"""Webhook answer time (DESIGN section 6: 2xx within 200 ms p99 at 200 requests/s).

`kpi serve` runs as its own process against the embedded broker, as in production; this process
sends an open-loop load at a fixed rate, alternating a signed HubSpot batch (10 notifications)
and a Pipedrive v2 delivery, and measures each answer from its scheduled send time (so a stall
is not hidden by the sender waiting for it: no coordinated omission). The first seconds are
warm-up. Both processes share the machine's cores.
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import aiohttp
import httpx
import orjson

from kpi_app.hooks_web import hubspot_signature
from streams.broker import EmbeddedBroker, free_port
from streams.childproc import stop_process

SECRET = "bench-secret"  # noqa: S105 - a throwaway secret of the bench server
BASIC = "kpi:bench"
RATE = 200.0
SECONDS = 20.0
WARMUP_SECONDS = 3.0


def _hubspot(n: int) -> bytes:
    now = int(time.time() * 1000)
    return orjson.dumps(
        [
            {
                "eventId": n * 10 + i,
                "subscriptionId": 1,
                "portalId": 62515,
                "appId": 7,
                "occurredAt": now,
                "subscriptionType": "deal.propertyChange",
                "attemptNumber": 0,
                "objectId": 5000 + n,
                "propertyName": "amount",
                "propertyValue": str(100 + i),
                "changeSource": "CRM",
            }
            for i in range(10)
        ]
    )


def _pipedrive(n: int) -> bytes:
    meta = {"action": "change", "entity": "deal", "entity_id": str(n), "id": f"bench-{n}",
            "timestamp": time.time(), "version": "2.0", "attempt": 1}  # fmt: skip
    data = {"id": n, "value": 100, "currency": "EUR", "status": "open", "stage_id": 1, "owner_id": 7}
    return orjson.dumps({"meta": meta, "data": data, "previous": {"value": 90}})


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _load(base: str) -> dict[str, Any]:
    """aiohttp, not httpx, as the client: httpx's per-request CPU alone (~2 ms) could not keep the
    schedule on two shared cores, and the sender's lag would be counted as answer time."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    basic = base64.b64encode(BASIC.encode()).decode()
    connector = aiohttp.TCPConnector(limit=200)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:

        async def one(n: int, scheduled: float, measure: bool) -> None:
            if n % 2 == 0:
                url, body = f"{base}/hooks/hubspot", _hubspot(n)
                stamp = str(int(time.time() * 1000))
                headers = {
                    "Content-Type": "application/json",
                    "X-HubSpot-Request-Timestamp": stamp,
                    "X-HubSpot-Signature-v3": hubspot_signature(SECRET, "POST", url, body, stamp),
                }
            else:
                url, body = f"{base}/hooks/pipedrive", _pipedrive(n)
                headers = {"Content-Type": "application/json", "Authorization": f"Basic {basic}"}
            try:
                async with client.post(url, data=body, headers=headers) as response:
                    await response.read()
                    status = str(response.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = type(exc).__name__
            if measure:
                latencies.append((time.perf_counter() - scheduled) * 1000)
                if status != "200":
                    errors[status] = errors.get(status, 0) + 1

        start = time.perf_counter()
        tasks = []
        total = int(RATE * SECONDS)
        for n in range(total):
            scheduled = start + n / RATE
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(n, scheduled, n / RATE >= WARMUP_SECONDS)))
        sent = time.perf_counter() - start
        await asyncio.gather(*tasks)
    return {
        "rate_per_s": RATE,
        "requests_measured": len(latencies),
        "send_rate_per_s": round(total / sent, 1),
        "p50_ms": round(_percentile(latencies, 0.50), 1),
        "p99_ms": round(_percentile(latencies, 0.99), 1),
        "max_ms": round(max(latencies), 1),
        "errors": errors,
    }


async def _translate_rate(redis_url: str, namespace: str, payloads: int = 400) -> dict[str, Any]:
    """Translation alone (HookTranslator on Redis, no broker): HubSpot items and Pipedrive
    deliveries per second of one agent, which must keep up with what the endpoint accepts."""
    from kpi_app.bootstrap import build_runtime
    from kpi_app.hooks_web import envelope
    from kpi_state.settings import Settings
    from streams.hooks_translator import HookTranslator

    settings = Settings(redis_url=redis_url, namespace=namespace, hubspot_owners="7=bob")
    runtime = build_runtime(settings)
    try:
        translator = HookTranslator(settings, runtime.redis)
        hubspot = [envelope("hubspot", _hubspot(n), 0) for n in range(payloads)]
        pipedrive = [envelope("pipedrive", _pipedrive(n).replace(b'"stage_id":1', b'"stage_id":null'), 0)
                     for n in range(payloads)]  # fmt: skip
        out: dict[str, Any] = {}
        for name, messages, items in (("hubspot", hubspot, 10), ("pipedrive", pipedrive, 1)):
            start = time.perf_counter()
            events = 0
            for message in messages:
                events += len((await translator.translate(message)).events)
            seconds = time.perf_counter() - start
            out[f"{name}_items_per_s"] = round(len(messages) * items / seconds)
            out[f"{name}_events"] = events
        await runtime.store.clear()
        return out
    finally:
        await runtime.aclose()


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"kpi serve exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError("kpi serve did not become healthy")


def run(redis_url: str) -> dict[str, Any]:
    suffix = os.urandom(4).hex()
    with EmbeddedBroker() as broker, tempfile.TemporaryFile() as log:
        port = free_port()
        env = {
            **os.environ,
            "KPI_REDIS_URL": redis_url,
            "KPI_NAMESPACE": f"bench-hooks-{suffix}",
            "KPI_TOPIC": f"bench-events-{suffix}",
            "KPI_HOOKS_TOPIC": f"bench-hooks-{suffix}",
            "KPI_HUBSPOT_APP_SECRET": SECRET,
            "KPI_PIPEDRIVE_AUTH": BASIC,
        }
        argv = [sys.executable, "-m", "kpi_app", "serve", "--port", str(port), "--kafka-url", broker.url]
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"
            _wait_healthy(base, proc)
            result = asyncio.run(_load(base))
        finally:
            stop_process(proc, 15)
    result["translation"] = asyncio.run(_translate_rate(redis_url, f"bench-hooks-{suffix}"))
    result["verdict"] = (
        f"webhook answer at {RATE:g} requests/s (serve + embedded broker + load generator on one machine): "
        f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, max {result['max_ms']} ms, "
        f"errors {sum(result['errors'].values())} (target p99 < 200 ms); translation by one agent: "
        f"{result['translation']['hubspot_items_per_s']:,} HubSpot items/s, "
        f"{result['translation']['pipedrive_items_per_s']:,} Pipedrive deliveries/s (before publishing)"
    )
    return result


if __name__ == "__main__":
    print(
        orjson.dumps(
            run(os.environ.get("KPI_REDIS_URL", "redis://127.0.0.1:6379/0")), option=orjson.OPT_INDENT_2
        ).decode()
    )
