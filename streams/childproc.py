"""Child processes that do not outlive their owner.

A child started with ``start_new_session=True`` leads its own process group: a terminal's Ctrl-C
does not reach it, and stopping it means signalling the whole group, so whatever it started goes
with it. ``signal_group`` and ``stop_groups`` are the one way this code base does that.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: signal.Signals) -> Callable[[], None] | None:
    """Linux: a ``preexec_fn`` that makes the kernel send ``sig`` to the child when the thread
    that started it dies (e.g. a SIGKILLed test run or supervisor), so nothing is orphaned.

    ``prctl`` is looked up here, in the parent, so the child runs no more than one foreign call
    between fork and exec. Elsewhere: None (no such guarantee).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def hook() -> None:  # pragma: no cover - runs in the child
        prctl(_PR_SET_PDEATHSIG, int(sig))

    return hook


def signal_group(pid: int, sig: signal.Signals | int) -> None:
    """``sig`` to the process group led by ``pid``; a group already gone is no error."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def stop_groups(procs: Sequence[subprocess.Popen[Any]], timeout: float) -> list[subprocess.Popen[Any]]:
    """SIGTERM to the group of each running ``proc``, in the order given; wait for all until one
    shared deadline ``timeout`` s away, SIGKILL the group of each still running, and reap them.

    Returns the processes that had to be killed. A process already exited is only reaped.
    """
    running = [proc for proc in procs if proc.poll() is None]
    for proc in running:
        signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    killed: list[subprocess.Popen[Any]] = []
    for proc in running:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
            killed.append(proc)
    return killed


def stop_process(proc: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM to ``proc`` alone (a child in our own process group), SIGKILL if it is still
    running ``timeout`` s later; reaped either way. A process already exited is only reaped."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
