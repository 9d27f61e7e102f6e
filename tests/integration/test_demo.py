"""`kpi demo` brings the whole product up with one command and leaves nothing behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from kpi_app.bootstrap import sync_redis_client

pytestmark = pytest.mark.integration

# Where the demo's Redis is when the tests run (the default of a plain redis.Redis()).
DEMO_REDIS_URL = "redis://localhost:6379/0"


def _marked_processes(mark: str) -> set[int]:
    """PIDs of live processes whose environment carries ``KPI_TEST_MARK=<mark>``: the demo
    and everything it started (children inherit the environment), and nothing else."""
    needle = f"KPI_TEST_MARK={mark}".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.add(int(entry.name))
    return found


def test_demo_runs_shows_kpis_and_stops_cleanly() -> None:
    mark = uuid.uuid4().hex
    namespace = f"test-demo-{mark[:8]}"
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
        env={**os.environ, "COLUMNS": "120", "KPI_TEST_MARK": mark},
    )
    try:
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "wall page" in proc.stdout
        rows = re.findall(r"│ leads\s+│\s*([\d,]+)\s*│\s*([\d,]+)\s*│\s*([\d,]+)\s*│\s*([\d,]+)", proc.stdout)
        assert rows, proc.stdout[-3000:]
        last = [int(v.replace(",", "")) for v in rows[-1]]
        assert last[3] > 0  # 30d leads from the backfill
        assert _marked_processes(mark) == set(), "a child of the demo outlived it"
        # Sample targets for this month and quarter (the quota row), left in the namespace.
        import orjson

        with sync_redis_client(DEMO_REDIS_URL) as check:
            loaded = orjson.loads(check.get(f"{namespace}:targets") or b"[]")
        assert {t["kpi"] for t in loaded} >= {"revenue_won", "deals_won", "leads"}
        assert any(t["scope"].startswith("rep:") for t in loaded)
    finally:
        client = sync_redis_client(DEMO_REDIS_URL)
        keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        if keys:
            client.unlink(*keys)
        client.close()
