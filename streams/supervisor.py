"""``kpi worker``: keeps one faust worker process running (DESIGN section 7).

faust exits at once when the broker is down at start-up, and a worker that must rewind or that
saw the topic re-created stops itself (``streams.worker``). The supervisor is the loop around it:

1. wait for the broker and create the topics with their partition counts (``ensure_topics``,
   retried for as long as it takes) -- before anything else can auto-create them;
2. start the worker as a child process and wait for it;
3. when it ends without being asked to, start it again: after 0.5 s when it stopped itself
   cleanly (exit code 0: a restart it asked for) or had run for a minute, else after a backoff
   doubling up to 30 s.

SIGTERM/SIGINT stop the loop: the child gets SIGTERM (a graceful faust stop), then SIGKILL after
a grace period. The child runs in its own session (a terminal's Ctrl-C reaches only us, and we
forward it once), and on Linux dies with SIGKILL if we die without stopping it (no orphans).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from types import FrameType

import structlog
from aiokafka.errors import KafkaError

from streams.childproc import die_with_parent
from streams.topics import ensure_topics

log = structlog.get_logger(__name__)

RESTART_MIN_SECONDS = 0.5
RESTART_MAX_SECONDS = 30.0
HEALTHY_RUN_SECONDS = 60.0  # a child that ran this long restarts without backoff
STOP_GRACE_SECONDS = 30.0


class Supervisor:
    def __init__(self, child_argv: Sequence[str], bootstrap: str, topics: Mapping[str, int]) -> None:
        self._argv = list(child_argv)
        self._bootstrap = bootstrap
        self._topics = dict(topics)
        self._stop = threading.Event()
        self._child: subprocess.Popen[bytes] | None = None

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        first = not self._stop.is_set()
        self._stop.set()
        if first:
            log.info("supervisor.stopping", signal=signal.Signals(signum).name)
            self._signal_child(signal.SIGTERM)

    def _signal_child(self, sig: signal.Signals) -> None:
        child = self._child
        if child is not None and child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, sig)

    def _topics_ready(self) -> bool:
        try:
            asyncio.run(ensure_topics(self._bootstrap, self._topics, timeout=5.0))
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("supervisor.broker_unavailable", bootstrap=self._bootstrap, error=repr(exc))
            return False
        return True

    def _run_child(self) -> int:
        self._child = subprocess.Popen(
            self._argv,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent(signal.SIGKILL),
        )
        log.info("supervisor.worker_started", pid=self._child.pid)
        if self._stop.is_set():  # a signal arrived between the check and the spawn
            self._signal_child(signal.SIGTERM)
        stop_deadline: float | None = None
        while True:
            try:
                return self._child.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                if self._stop.is_set() and stop_deadline is None:
                    stop_deadline = time.monotonic() + STOP_GRACE_SECONDS
                if stop_deadline is not None and time.monotonic() > stop_deadline:
                    log.warning("supervisor.kill_worker", pid=self._child.pid, grace=STOP_GRACE_SECONDS)
                    self._signal_child(signal.SIGKILL)

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        delay = RESTART_MIN_SECONDS
        try:
            while not self._stop.is_set():
                if not self._topics_ready():
                    self._stop.wait(delay)
                    delay = min(delay * 2, RESTART_MAX_SECONDS)
                    continue
                started = time.monotonic()
                code = self._run_child()
                if self._stop.is_set():
                    log.info("supervisor.worker_stopped", returncode=code)
                    break
                ran = time.monotonic() - started
                # 0: the worker stopped itself to be restarted (streams.worker.request_restart).
                healthy = code == 0 or ran >= HEALTHY_RUN_SECONDS
                delay = RESTART_MIN_SECONDS if healthy else min(delay * 2, RESTART_MAX_SECONDS)
                log.warning(
                    "supervisor.worker_exited", returncode=code, ran_seconds=round(ran, 1), restart_in=delay
                )
                self._stop.wait(delay)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._signal_child(signal.SIGKILL)
        return 0
