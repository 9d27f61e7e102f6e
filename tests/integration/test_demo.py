"""`kpi demo` brings the whole product up with one command and leaves nothing behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid

import pytest

pytestmark = pytest.mark.integration


def _children_of_demos() -> set[int]:
    """PIDs of processes a demo starts (broker, worker, serve, simulator)."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
    pids = set()
    for line in out.splitlines():
        pid, _, args = line.strip().partition(" ")
        if "tansu" in args or re.search(r"kpi_app (worker|serve|simulate|send)", args):
            pids.add(int(pid))
    return pids


def test_demo_runs_shows_kpis_and_stops_cleanly() -> None:
    before = _children_of_demos()
    namespace = f"test-demo-{uuid.uuid4().hex[:8]}"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kpi_app",
            "demo",
            "--duration",
            "40",
            "--history-days",
            "14",
            "--namespace",
            namespace,
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "COLUMNS": "120"},
    )
    try:
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "wall page" in proc.stdout
        rows = re.findall(r"│ leads\s+│\s*([\d,]+)\s*│\s*([\d,]+)\s*│\s*([\d,]+)\s*│\s*([\d,]+)", proc.stdout)
        assert rows, proc.stdout[-3000:]
        last = [int(v.replace(",", "")) for v in rows[-1]]
        assert last[3] > 0  # 30d leads from the backfill
        assert _children_of_demos() <= before, "a child of the demo outlived it"
    finally:
        import redis

        client = redis.Redis()
        keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        if keys:
            client.unlink(*keys)
        client.close()
