"""``OneInFlight``: the next chunk is prepared while one call runs, and calls never overlap."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from kpi_state.in_flight import OneInFlight


class Calls:
    """Calls that finish when the test releases them, with a log of what happened when."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.release: dict[str, asyncio.Event] = {}

    def call(self, name: str, *, fail: bool = False) -> Callable[[], Awaitable[str]]:
        self.release[name] = asyncio.Event()

        async def run() -> str:
            self.log.append(f"start {name}")
            try:
                await self.release[name].wait()
            except asyncio.CancelledError:
                self.log.append(f"cancelled {name}")
                raise
            if fail:
                raise ConnectionError(name)
            return name.upper()

        return run

    def done(self, result: str, context: int) -> None:
        self.log.append(f"done {result} {context}")


def test_the_caller_works_while_a_call_runs_and_calls_settle_in_order() -> None:
    async def scenario() -> list[str]:
        calls = Calls()
        async with OneInFlight(calls.done) as in_flight:
            await in_flight.start(calls.call("a"), 1)
            calls.log.append("prepare b")  # the call is sent, not finished: the caller goes on
            second = asyncio.ensure_future(in_flight.start(calls.call("b"), 2))
            await asyncio.sleep(0.01)
            calls.log.append("b waits for a")  # b is not started before a is done
            calls.release["a"].set()
            await second
            calls.release["b"].set()
        return calls.log

    assert asyncio.run(scenario()) == [
        "start a",
        "prepare b",
        "b waits for a",
        "done A 1",
        "start b",
        "done B 2",  # leaving normally waits for the last call
    ]


def test_a_failed_call_stops_the_next_from_starting() -> None:
    calls = Calls()

    async def scenario() -> None:
        async with OneInFlight(calls.done) as in_flight:
            await in_flight.start(calls.call("a", fail=True), 1)
            calls.release["a"].set()
            await in_flight.start(calls.call("b"), 2)

    with pytest.raises(ConnectionError, match="a"):
        asyncio.run(scenario())
    assert calls.log == ["start a"]


def test_leaving_with_an_error_cancels_the_running_call() -> None:
    calls = Calls()

    async def scenario() -> None:
        async with OneInFlight(calls.done) as in_flight:
            await in_flight.start(calls.call("a"), 1)
            raise ValueError("preparing failed")

    with pytest.raises(ValueError, match="preparing failed"):
        asyncio.run(scenario())
    assert calls.log == ["start a", "cancelled a"]


def test_nothing_started_nothing_to_wait_for() -> None:
    async def scenario() -> None:
        async with OneInFlight(Calls().done) as in_flight:
            await in_flight.wait()

    asyncio.run(scenario())
