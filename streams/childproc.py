"""Child processes that do not outlive their owner."""

from __future__ import annotations

import ctypes
import signal
import sys
from collections.abc import Callable

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
