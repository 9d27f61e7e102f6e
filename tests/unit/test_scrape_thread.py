"""The worker's scrape runs on a loop of its own: the consuming loop keeps turning meanwhile."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, cast

import pytest

from kpi_state.report import KpiReader
from streams.scrape_thread import ScrapeThread

READER = cast(KpiReader, object())


def test_a_slow_scrape_does_not_block_the_callers_loop() -> None:
    scrapes = ScrapeThread(lambda: READER)
    caller = threading.get_ident()

    async def slow_scrape(reader: KpiReader) -> tuple[int, Any]:
        time.sleep(0.5)  # noqa: ASYNC251 - stands for the CPU of a scrape, which blocks its loop
        return threading.get_ident(), reader

    async def scenario() -> tuple[int, Any, int]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.ensure_future(tick())
        thread, reader = await scrapes.run(slow_scrape)
        ticker.cancel()
        return thread, reader, ticks

    thread, reader, ticks = asyncio.run(scenario())
    assert thread != caller and reader is READER
    assert ticks >= 10  # on the caller's loop it would be 0: the scrape would hold it throughout


def test_errors_and_timeouts_reach_the_caller() -> None:
    scrapes = ScrapeThread(lambda: READER, timeout=0.2)

    async def failing(reader: KpiReader) -> None:
        raise ConnectionError("redis down")

    async def hanging(reader: KpiReader) -> None:
        await asyncio.sleep(5)

    with pytest.raises(ConnectionError):
        asyncio.run(scrapes.run(failing))
    with pytest.raises(TimeoutError):
        asyncio.run(scrapes.run(hanging))
