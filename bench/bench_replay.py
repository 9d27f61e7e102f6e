"""Replay throughput and Redis memory (DESIGN section 6: 20,000+ events/s without the broker).

Generates a simulated history (with the CRM's corrections, contract v2), replays it through the
same code as `kpi replay` into a fresh namespace, and reports events/s, the CPU cost per applied
event (the Redis server's, read from INFO CPU, and this process's: parsing, facts, the client),
Redis memory per 100,000 events (split into idempotency keys and KPI/join state), and the memory
of the KPI buckets alone. Redis runs every script on one core, so 1 / (Redis CPU per event) is
the ceiling of one Redis for any number of workers (DESIGN section 6).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from kpi_app.bootstrap import build_runtime
from kpi_app.replay import Replayer
from kpi_app.simulation import SimConfig, simulate_history
from kpi_state.keys import ENTITY_KINDS
from kpi_state.settings import Settings


def write_history(path: Path, n_events: int, seed: int = 7, corrections: bool = True) -> int:
    """At least n_events of simulated history ending now, as JSONL."""
    end = datetime.now(UTC).replace(microsecond=0)
    days = 30.0
    config = SimConfig(seed=seed, corrections=corrections)
    while True:
        events = list(simulate_history(config, start=end - timedelta(days=days), end=end))
        if len(events) >= n_events:
            break
        days *= 1.5 * n_events / max(len(events), 1)
    with open(path, "wb") as out:
        for event in events[:n_events]:
            out.write(orjson.dumps(event) + b"\n")
    return n_events


async def _memory_of(client: Any, pattern: str) -> int:
    total = 0
    async for key in client.scan_iter(match=pattern, count=1000):
        total += await client.memory_usage(key, samples=0) or 0
    return total


async def _redis_cpu_seconds(client: Any) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _run(redis_url: str, n_events: int, corrections: bool = True) -> dict[str, Any]:
    settings = Settings(redis_url=redis_url, namespace=f"bench-replay-{int(time.time())}")
    runtime = build_runtime(settings)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            history = Path(tmp) / "history.jsonl"
            write_history(history, n_events, corrections=corrections)
            await runtime.store.clear()
            before = (await runtime.redis.info("memory"))["used_memory"]
            with open(Path(tmp) / "rejects.jsonl", "wb") as rejects:  # noqa: ASYNC230 - bench setup
                replayer = Replayer(runtime, rejects)
                redis_cpu, own_cpu = await _redis_cpu_seconds(runtime.redis), time.process_time()
                started = time.perf_counter()
                summary = await replayer.run([str(history)], None)
                elapsed = time.perf_counter() - started
                own_cpu = time.process_time() - own_cpu
                redis_cpu = await _redis_cpu_seconds(runtime.redis) - redis_cpu
            after = (await runtime.redis.info("memory"))["used_memory"]
            layout = runtime.store.layout
            seen = await _memory_of(runtime.redis, layout.seen_pattern)
            buckets = 0
            for kind in ("m", "h", "d"):
                buckets += await _memory_of(runtime.redis, layout.bucket_pattern(kind))
            buckets += await _memory_of(runtime.redis, layout.all)
            entities = 0
            for entity in ENTITY_KINDS:
                entities += await _memory_of(runtime.redis, layout.entity_pattern(entity))
            # A second replay of the same file: everything is a duplicate.
            with open(Path(tmp) / "rejects2.jsonl", "wb") as rejects:  # noqa: ASYNC230 - bench setup
                again = Replayer(runtime, rejects)
                started = time.perf_counter()
                dup_summary = await again.run([str(history)], None)
                dup_elapsed = time.perf_counter() - started
        per_100k = 100_000 / max(summary.lines, 1)
        return {
            "events": summary.lines,
            "applied": summary.applied,
            "seconds": round(elapsed, 2),
            "events_per_s": round(summary.lines / elapsed),
            "corrections": corrections,
            "redis_cpu_us_per_applied_event": round(redis_cpu * 1e6 / max(summary.applied, 1), 2),
            "replay_process_cpu_us_per_applied_event": round(own_cpu * 1e6 / max(summary.applied, 1), 2),
            "duplicate_replay_events_per_s": round(dup_summary.lines / dup_elapsed),
            "duplicates_on_second_replay": dup_summary.duplicates,
            "redis_used_memory_per_100k_events_mb": round((after - before) * per_100k / 2**20, 2),
            "idempotency_bytes_per_event": round(seen / max(summary.applied, 1)),
            "kpi_bucket_memory_mb": round(buckets / 2**20, 2),
            "entity_join_state_mb": round(entities / 2**20, 2),
        }
    finally:
        await runtime.store.clear()
        await runtime.aclose()


def run(
    redis_url: str = "redis://127.0.0.1:6379/0", n_events: int = 200_000, corrections: bool = True
) -> dict[str, Any]:
    return asyncio.run(_run(redis_url, n_events, corrections))


if __name__ == "__main__":
    print(orjson.dumps(run(), option=orjson.OPT_INDENT_2).decode())
