"""CPU per applied event of a throughput run, and the ceilings it implies. Pure."""

from __future__ import annotations

from typing import Any


def cost_model(result: dict[str, Any], cores: int) -> dict[str, Any] | None:
    """CPU per applied event (microseconds) of a throughput run, by process, and the ceilings it
    implies on this machine: Redis runs every script on one core, and the workers, Redis, the
    broker and the producer share ``cores``.

    ``one_worker_ceiling``: one worker whose CPU fully overlaps Redis's, 1 / max(worker, redis);
    ``two_worker_ceiling``: min(1 / redis, cores / (2 workers' + redis + rest per event)), where
    a second worker adds no per-event cost, only a second core's worth of worker time.
    """
    cpu, rate = result.get("cpu"), result.get("events_per_s")
    if not cpu or not rate:
        return None

    def per_event(share: float) -> float:
        return float(share * cores / rate * 1e6)

    worker, redis = per_event(cpu["workers"]), per_event(cpu["redis"])
    rest = per_event(cpu["broker"] + cpu["runner"] + cpu["other"])
    return {
        "worker_us_per_event": round(worker, 1),
        "redis_us_per_event": round(redis, 1),
        "rest_us_per_event": round(rest, 1),
        "one_worker_ceiling_events_per_s": round(1e6 / max(worker, redis)),
        "two_worker_ceiling_events_per_s": round(min(1e6 / redis, cores * 1e6 / (worker + redis + rest))),
    }
