"""A real Prometheus over a backfilled TSDB, and the promtool calls that fill it.

- ``PrometheusServer``: ``/usr/bin/prometheus`` on a free local port with no scrape targets,
  serving one TSDB directory; its retention is a century, because retention counts back from
  the newest block and would delete the start of a long history. It dies with its owner
  (``die_with_parent``) and ``stop()`` is safe to call twice.
- ``backfill_openmetrics`` wraps ``promtool tsdb create-blocks-from openmetrics``, with blocks
  up to ``BLOCK_HOURS`` long: promtool reads the whole input once per block (prometheus#8915),
  so 2 h blocks made a 60-day run take hundreds of passes. Prometheus 2.39+ merges the
  overlapping blocks of later backfills itself.

``promtool tsdb create-blocks-from rules`` is not used: it evaluates a group at the group's
offset within the interval, a hash of the group name and FILE PATH (``Group.EvalTimestamp``),
so with a temp file each level landed at another arbitrary second of the step, and a level
evaluated just before the one it reads saw that level's previous step. Measured: the same
backtest fired 1 h later in 1 run of 3. ``run`` evaluates records with ``query_range`` on the
grid instead, which is what promtool does, minus the offset.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import structlog

from streams.childproc import die_with_parent, stop_process

log = structlog.get_logger(__name__)
BLOCK_HOURS = 31 * 24  # what Prometheus itself allows at most by default
MAX_POINTS = 10_000  # per series and query_range call (Prometheus refuses more than 11,000)


class BacktestError(RuntimeError):
    """A tool failed or is missing; the message says which and why."""


def require_binary(name: str, path: str | None = None) -> str:
    found = path or shutil.which(name)
    if found is None or not Path(found).exists():
        raise BacktestError(f"{name} not found (install it: `make deps`)")
    return found


def _run(cmd: list[str], what: str) -> None:
    done = subprocess.run(
        cmd, capture_output=True, text=True, check=False, preexec_fn=die_with_parent(signal.SIGKILL)
    )
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-2000:]
        raise BacktestError(f"{what} failed (exit {done.returncode}): {tail}")


def backfill_openmetrics(promtool: str, source: Path, tsdb: Path) -> None:
    _run(
        [
            promtool,
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            "--quiet",
            f"--max-block-duration={BLOCK_HOURS}h",
            str(source),
            str(tsdb),
        ],
        "promtool create-blocks-from openmetrics",
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrometheusServer:
    def __init__(self, binary: str, tsdb: Path, workdir: Path, lookback_s: int) -> None:
        self._binary, self._tsdb, self._workdir, self._lookback = binary, tsdb, workdir, lookback_s
        self._proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, timeout: float = 60.0) -> None:
        config = self._workdir / "prometheus.yml"
        config.write_text("global:\n  evaluation_interval: 1m\nscrape_configs: []\n", encoding="utf-8")
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        logfile = self._workdir / "prometheus.log"
        with open(logfile, "ab") as sink:
            self._proc = subprocess.Popen(
                [
                    self._binary, f"--config.file={config}", f"--storage.tsdb.path={self._tsdb}",
                    "--storage.tsdb.retention.time=100y", f"--web.listen-address=127.0.0.1:{port}",
                    f"--query.lookback-delta={self._lookback}s", "--log.level=warn",
                ],
                stdout=sink, stderr=sink, stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent(signal.SIGKILL),
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = logfile.read_text(errors="replace")[-2000:]
                raise BacktestError(f"prometheus exited with {self._proc.returncode}: {tail}")
            if self._ready():
                log.info("prometheus ready", url=self.url, tsdb=str(self._tsdb))
                return
            time.sleep(0.2)
        self.stop()
        raise BacktestError(f"prometheus not ready after {timeout:.0f} s")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as reply:  # noqa: S310 - local http
                return bool(reply.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc, 20)

    def restart(self) -> None:
        self.stop()
        self.start()

    def query_range(
        self, expr: str, start_s: int, end_s: int, step_s: int
    ) -> list[tuple[dict[str, str], list[tuple[int, float]]]]:
        """``expr`` at ``start_s + k*step_s`` up to ``end_s`` (seconds): each result series' labels
        and (time in ms, value) points; queried in pieces of at most ``MAX_POINTS`` steps."""
        series: dict[tuple[tuple[str, str], ...], list[tuple[int, float]]] = {}
        piece = start_s
        while piece <= end_s:
            last = min(end_s, piece + (MAX_POINTS - 1) * step_s)
            data = self._api("query_range", {"query": expr, "start": piece, "end": last, "step": step_s})
            for item in data["result"]:
                key = tuple(sorted(item["metric"].items()))
                series.setdefault(key, []).extend(
                    (round(float(t) * 1000), float(v)) for t, v in item["values"]
                )
            piece = last + step_s
        return [(dict(key), points) for key, points in series.items()]

    def _api(self, endpoint: str, params: dict[str, Any]) -> Any:
        body = urllib.parse.urlencode(params).encode()
        request = urllib.request.Request(f"{self.url}/api/v1/{endpoint}", data=body, method="POST")  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=300) as reply:  # noqa: S310 - local http
                doc = orjson.loads(reply.read())
        except urllib.error.HTTPError as exc:
            raise BacktestError(f"prometheus refused {params.get('query')!r}: {exc.read()[:1000]!r}") from exc
        if doc.get("status") != "success":
            raise BacktestError(f"prometheus: {doc.get('error')}")
        return doc["data"]
