"""``kpi worker`` processes of the streaming bench: start, wait for their group, stop whole trees.

The supervisor starts its faust child in a session of its own, so stopping a worker walks its
process tree from /proc (start times guard against reused pids).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.stream_data import PARTITIONS
from streams.broker import free_port
from streams.childproc import signal_group, stop_groups

PROBE_DIMENSION_CAP = 100_000  # sources a bench worker admits: one per probe (see start_worker)
READY_TIMEOUT = 120.0
STOP_TIMEOUT = 45.0  # the supervisor gives its faust child 30 s, then SIGKILL


@dataclass
class WorkerProcess:
    """A `kpi worker` (supervisor; its faust child runs in a session of its own)."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    started: float  # perf_counter

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def diagnosis(self) -> dict[str, Any]:
        """faust processes the supervisor started (1 unless one stopped) and the structured
        warnings and errors of the log: a restart in the middle of a measurement spoils it."""
        starts, warnings = 0, []
        try:
            lines = self.log.read_bytes().splitlines()
        except OSError:
            lines = []
        for line in lines:
            start = line.find(b"{")
            if start < 0:
                continue
            try:
                entry = orjson.loads(line[start:])
            except orjson.JSONDecodeError:
                continue
            if not isinstance(entry, dict):
                continue
            if entry.get("event") == "supervisor.worker_started":
                starts += 1
            elif entry.get("level") in ("warning", "error", "critical"):
                warnings.append(orjson.dumps(entry).decode()[:300])
        return {"faust_processes": starts, "warnings": warnings[:5]}

    def tail(self) -> str:
        try:
            return self.log.read_bytes()[-3000:].decode(errors="replace")
        except OSError:
            return ""


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) of every process, from /proc."""
    table: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            table[int(entry.name)] = (int(fields[1]), fields[19])
    return table


def _descendants(pid: int) -> dict[int, str]:
    """Live descendants of ``pid`` -> their start time (so that a reused pid is not mistaken)."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for child, (parent, _) in table.items():
        children.setdefault(parent, []).append(child)
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = table[child][1]
            todo.append(child)
    return found


def start_worker(
    kafka_url: str, redis_url: str, namespace: str, topic: str, group: str, log: Path
) -> WorkerProcess:
    port = free_port()
    argv = [sys.executable, "-m", "kpi_app", "worker", "--kafka-url", kafka_url, "--redis-url", redis_url]
    argv += ["--namespace", namespace, "--topic", topic, "--group", group, "--web-port", str(port)]
    # Freshness probes each carry a source of their own (their `all` field is what is polled):
    # past the write-time dimension cap (KPI_DIMENSION_CAP, 500) they would fold into "other" and
    # never be seen, so the bench's workers admit more.
    env = {**os.environ, "KPI_DIMENSION_CAP": str(PROBE_DIMENSION_CAP)}
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    return WorkerProcess(proc, port, log, time.perf_counter())


def stop_workers(workers: Sequence[WorkerProcess]) -> None:
    """SIGTERM to each supervisor (it stops its faust child), SIGKILL after ``STOP_TIMEOUT``; then
    make sure no descendant (the faust children run in sessions of their own) is left."""
    running = [w for w in workers if w.proc.poll() is None]
    trees = {w.proc.pid: _descendants(w.proc.pid) for w in running}
    stop_groups([w.proc for w in running], STOP_TIMEOUT)
    left = {pid: start for tree in trees.values() for pid, start in tree.items()}
    for _ in range(2):  # the children die with their supervisor (PR_SET_PDEATHSIG); else SIGKILL
        deadline = time.monotonic() + 5.0
        while left and time.monotonic() < deadline:
            table = _proc_table()
            left = {pid: start for pid, start in left.items() if table.get(pid, (0, ""))[1] == start}
            if left:
                time.sleep(0.1)
        for pid in left:  # still the same process (start time checked): its own session leader
            signal_group(pid, signal.SIGKILL)
    if left:
        raise RuntimeError(f"worker processes left behind: {sorted(left)}")


def check_alive(workers: Sequence[WorkerProcess]) -> None:
    for w in workers:
        if w.proc.poll() is not None:
            raise RuntimeError(f"worker on :{w.port} exited with {w.proc.returncode}:\n{w.tail()}")


async def wait_assigned(http: httpx.AsyncClient, workers: Sequence[WorkerProcess]) -> float:
    """Until every worker answers ``/healthz`` 200 and their partitions are disjoint and cover the
    topic (the group is settled); seconds since the first was started."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        check_alive(workers)
        owned: list[int] = []
        ready = True
        for w in workers:
            try:
                response = await http.get(f"{w.url}/healthz", timeout=2.0)
            except httpx.HTTPError:
                ready = False
                break
            if response.status_code != 200:
                ready = False
                break
            owned += response.json().get("partitions", [])
        if ready and sorted(owned) == list(range(PARTITIONS)):
            return time.perf_counter() - min(w.started for w in workers)
        if time.monotonic() > deadline:
            raise TimeoutError(f"workers not assigned within {READY_TIMEOUT:.0f} s:\n{workers[0].tail()}")
        await asyncio.sleep(0.2)


def worker_pids(workers: Sequence[WorkerProcess]) -> list[int]:
    return [pid for w in workers for pid in (w.proc.pid, *_descendants(w.proc.pid))]
