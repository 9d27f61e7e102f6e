"""One Redis call in flight while the caller prepares the next: ``OneInFlight``.

Redis runs a script on its own core, so a caller that prepares chunk N+1 (parsing, validation,
the script's arguments: CPU in this process) while Redis runs chunk N keeps both busy. The
worker's applier (``streams.apply_take``) and ``kpi replay`` (``kpi_app.replay``) both apply
their chunks through it.

Contract: calls run one at a time, in the order started. ``start`` first waits for the call in
flight and hands its result to ``on_done``, and only then starts the next: a chunk is never sent
before the one before it succeeded (a partition's watermark must never rise past a chunk that
failed). Leaving the ``async with`` normally waits for the last call; leaving it with an
exception cancels a call that is still running, so nothing is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Generic, Self, TypeVar

R = TypeVar("R")  # what a call returns
C = TypeVar("C")  # what the caller needs to settle a call (its chunk)

# redis-py takes about three loop turns to write a request: started without them, the call would
# leave Redis idle while the caller prepares the next chunk.
WRITE_TURNS = 3


class OneInFlight(Generic[R, C]):
    """``async with OneInFlight(on_done) as calls: await calls.start(call, context)``."""

    def __init__(self, on_done: Callable[[R, C], None]) -> None:
        self._on_done = on_done
        self._running: tuple[asyncio.Future[R], C] | None = None

    async def start(self, call: Callable[[], Awaitable[R]], context: C) -> None:
        """Settle the call in flight (``on_done``), then start ``call()`` and let it be sent."""
        await self.wait()
        self._running = (asyncio.ensure_future(call()), context)
        for _ in range(WRITE_TURNS):
            await asyncio.sleep(0)

    async def wait(self) -> None:
        """Wait for the call in flight, if any, and hand its result to ``on_done``."""
        if self._running is None:
            return
        future, context = self._running
        result = await future
        self._running = None
        self._on_done(result, context)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self.wait()
            return
        running, self._running = self._running, None
        if running is not None:  # failing: never leave the call behind (cancel is a no-op once done)
            running[0].cancel()
            with contextlib.suppress(BaseException):
                await running[0]
