"""Stopping a child's process group: SIGTERM first, SIGKILL after the grace, nothing left behind."""

from __future__ import annotations

import signal
import subprocess

from streams.childproc import signal_group, stop_groups


def _group(script: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sh", "-c", script], start_new_session=True)


def test_a_group_that_stops_on_sigterm_is_not_killed() -> None:
    proc = _group("sleep 30")
    assert stop_groups([proc], timeout=10.0) == []
    assert proc.returncode == -signal.SIGTERM


def test_a_group_that_ignores_sigterm_is_killed_after_the_grace() -> None:
    stubborn = subprocess.Popen(
        ["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done"],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert stubborn.stdout is not None
    assert stubborn.stdout.readline() == b"ready\n"  # the trap is set before SIGTERM is sent
    polite = _group("sleep 30")
    assert stop_groups([stubborn, polite], timeout=0.5) == [stubborn]
    assert stubborn.returncode == -signal.SIGKILL
    assert polite.returncode == -signal.SIGTERM
    stubborn.stdout.close()


def test_an_exited_child_is_only_reaped_and_a_gone_group_is_no_error() -> None:
    proc = _group("exit 3")
    proc.wait()
    assert stop_groups([proc], timeout=1.0) == []
    assert proc.returncode == 3
    signal_group(proc.pid, signal.SIGTERM)  # the group is gone: no ProcessLookupError
