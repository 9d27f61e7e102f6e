"""The private faust/aiokafka names ``streams.faust_compat`` relies on still exist and behave as it
expects. A failure here means an upgrade changed them: re-check the hook the message names."""

from __future__ import annotations

import asyncio
import inspect
from importlib.metadata import version
from typing import Any

import aiokafka
import pytest
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.drivers import aiokafka as driver
from faust.types import TP

from kpi_state.settings import Settings
from streams.faust_app import make_app
from streams.faust_compat import FETCH_MAX_WAIT_MS, commit_offsets

PINNED = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}


def _parameters(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


@pytest.mark.parametrize(("package", "pinned"), PINNED.items())
def test_hooks_were_checked_against_the_installed_versions(package: str, pinned: str) -> None:
    assert version(package) == pinned, (
        f"{package} is {version(package)}, streams/faust_compat.py was checked against {pinned}: "
        "re-check every hook it lists (this test file says what each relies on), then update "
        "PINNED here and the versions in its docstring"
    )


def test_fetch_wait_hook_reaches_the_consumer_faust_builds() -> None:
    factory = driver.AIOKafkaConsumerThread._create_worker_consumer
    assert _parameters(getattr(driver.AIOKafkaConsumerThread, "_kpi_original_create", factory)) == [
        "self",
        "transport",
    ], "faust's AIOKafkaConsumerThread._create_worker_consumer(self, transport) changed: see limit_fetch_wait"
    assert "self._fetch_max_wait_ms" in inspect.getsource(aiokafka.AIOKafkaConsumer.start), (
        "aiokafka's AIOKafkaConsumer.start no longer reads _fetch_max_wait_ms: limit_fetch_wait has no effect"
    )

    async def build() -> tuple[int, int]:
        app = make_app(Settings(kafka_url="kafka://127.0.0.1:9"), web_port=6099)  # connects nowhere
        thread: Any = app.consumer._thread
        original = thread._kpi_original_create(app.transport)
        patched = thread._create_worker_consumer(app.transport)
        try:
            return original._fetch_max_wait_ms, patched._fetch_max_wait_ms
        finally:
            await original.stop()
            await patched.stop()
            thread.thread_loop.close()  # the consumer thread's own loop, never started here

    faust_default, ours = asyncio.run(build())
    assert faust_default == 1500, (
        f"faust now builds its consumer with a fetch wait of {faust_default} ms, not 1500: "
        "limit_fetch_wait may be unneeded or wrong"
    )
    assert ours == FETCH_MAX_WAIT_MS


@pytest.mark.parametrize("consumer_class", [FaustConsumer, driver.Consumer])
def test_raw_commit_takes_an_offsets_mapping(consumer_class: type) -> None:
    raw_commit = getattr(consumer_class, "_commit", None)
    assert raw_commit is not None and inspect.iscoroutinefunction(raw_commit), (
        f"{consumer_class.__qualname__}._commit is gone or not a coroutine: commit_offsets needs another way "
        "to commit a given offset"
    )
    assert _parameters(raw_commit) == ["self", "offsets"], (
        f"{consumer_class.__qualname__}._commit(self, offsets) changed: see commit_offsets"
    )


def test_commit_offsets_hands_the_offsets_to_the_raw_commit() -> None:
    class Recording(driver.Consumer):  # type: ignore[misc]  # faust is untyped
        def __init__(self) -> None:
            self.seen: list[Any] = []

        async def _commit(self, offsets: Any) -> bool:
            self.seen.append(dict(offsets))
            return True

    consumer = Recording()
    offsets = {TP("crm-events", 3): 42}
    assert asyncio.run(commit_offsets(consumer, offsets)) is True
    assert consumer.seen == [offsets]
