"""A scrape of the worker's ``/metrics`` runs on an event loop of its own, in a daemon thread.

A scrape reads every window from Redis and renders thousands of series (tens of milliseconds of
CPU, more when Redis is slow). On the loop that consumes and applies events it would stall
fetching, acknowledgments and heartbeats for that long on every scrape; on a loop of its own it
only shares the GIL, in 5 ms slices. The reader (and its Redis client) is built inside the thread,
since a redis.asyncio client belongs to the loop it first connects in.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import TypeVar

from kpi_state.report import KpiReader

T = TypeVar("T")


class ScrapeThread:
    def __init__(self, make_reader: Callable[[], KpiReader], *, timeout: float = 10.0) -> None:
        self._make_reader = make_reader
        self._timeout = timeout
        self._lock = threading.Lock()
        self._started: tuple[asyncio.AbstractEventLoop, KpiReader] | None = None

    def _start(self) -> tuple[asyncio.AbstractEventLoop, KpiReader]:
        with self._lock:
            if self._started is None:
                ready: Future[tuple[asyncio.AbstractEventLoop, KpiReader]] = Future()

                def serve() -> None:
                    loop = asyncio.new_event_loop()
                    asyncio.set_event_loop(loop)
                    try:
                        ready.set_result((loop, self._make_reader()))
                    except BaseException as exc:
                        ready.set_exception(exc)
                        return
                    loop.run_forever()

                threading.Thread(target=serve, name="kpi-scrape", daemon=True).start()
                self._started = ready.result(timeout=self._timeout)
            return self._started

    async def run(self, job: Callable[[KpiReader], Awaitable[T]]) -> T:
        """``job(reader)`` on the scrape loop; the caller's loop only waits for the result."""
        loop, reader = self._start()

        async def call() -> T:
            return await job(reader)

        future = asyncio.run_coroutine_threadsafe(call(), loop)
        try:
            async with asyncio.timeout(self._timeout):
                return await asyncio.wrap_future(future)
        except BaseException:
            future.cancel()
            raise
