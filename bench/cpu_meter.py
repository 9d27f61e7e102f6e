"""The machine's CPU use, from /proc: per process group of the streaming bench, and overall."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def _process_jiffies(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


@dataclass(frozen=True)
class CpuSample:
    busy: int  # jiffies, all cores
    total: int
    runner: float  # this process and its reaped descendants
    broker: int
    workers: int  # the live processes given to ``sample``
    redis: int


class CpuMeter:
    """The machine's CPU use over a window, split into this process (producer, pollers), the
    broker, the workers, the Redis server (shared with whatever else uses it) and the rest: other
    work on the machine. Shares of all cores (1.0: every core busy)."""

    def __init__(self, broker_pid: int | None, redis_pid: int | None) -> None:
        self._broker_pid = broker_pid
        self._redis_pid = redis_pid
        self._hz = os.sysconf("SC_CLK_TCK")

    def sample(self, pids: Sequence[int] = ()) -> CpuSample:
        """``pids``: the workers' processes (running, so not yet in ``os.times()``' children)."""
        busy, total = _cpu_times()
        t = os.times()
        return CpuSample(
            busy,
            total,
            (t.user + t.system + t.children_user + t.children_system) * self._hz,
            _process_jiffies(self._broker_pid) if self._broker_pid else 0,
            sum(_process_jiffies(pid) for pid in pids),
            _process_jiffies(self._redis_pid) if self._redis_pid else 0,
        )

    def since(self, start: CpuSample, pids: Sequence[int] = ()) -> dict[str, float]:
        end = self.sample(pids)
        total = max(end.total - start.total, 1)
        parts = {
            "runner": (end.runner - start.runner) / total,
            "broker": (end.broker - start.broker) / total,
            "workers": (end.workers - start.workers) / total,
            "redis": (end.redis - start.redis) / total,
        }
        busy = (end.busy - start.busy) / total
        shares = {"machine_busy": round(busy, 3)} | {k: round(v, 3) for k, v in parts.items()}
        return shares | {"other": round(max(0.0, busy - sum(parts.values())), 3)}


async def redis_server_pid(client: aioredis.Redis) -> int | None:
    """The Redis server's pid if it runs on this machine (its CPU is then measured apart)."""
    try:
        pid = int((await client.info("server"))["process_id"])
    except (KeyError, ValueError, aioredis.RedisError):
        return None
    return pid if "redis" in _command_name(pid) else None


def _command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text()
    except OSError:
        return ""


def cpu_busy_share(seconds: float = 1.0) -> float | None:
    """Share of all cores busy over ``seconds`` (before we start anything: other work's load)."""
    try:
        busy0, total0 = _cpu_times()
        time.sleep(seconds)
        busy1, total1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return None
    return round((busy1 - busy0) / max(total1 - total0, 1), 3)


def machine(load_before: tuple[float, float, float], busy_before: float | None) -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "cpu_busy_share_before": busy_before,
    }
