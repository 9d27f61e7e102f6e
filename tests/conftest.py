"""Shared fixtures: settings with a unique namespace, and a store on the real Redis.

Tests are synchronous and run their coroutines with ``asyncio.run`` (no pytest-asyncio);
a redis.asyncio client belongs to the event loop it first connects in, so ``store_for``
opens a fresh client inside the coroutine and closes it there.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest

from kpi_app.bootstrap import build_runtime
from kpi_state.settings import Settings
from kpi_state.store import KpiStore

# Machines that run the tests have Redis 7 here (DESIGN section 1). Tests use a database of
# their own, away from benchmark data: KpiStore.clear() SCANs the whole database.
REDIS_URL = os.environ.get("KPI_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

SettingsFactory = Callable[..., Settings]
StoreOpener = Callable[..., AbstractAsyncContextManager[KpiStore]]


def new_settings(**overrides: Any) -> Settings:
    """Settings in a namespace of its own ("test-<uuid>"), on the test Redis."""
    values: dict[str, Any] = {"redis_url": REDIS_URL, "namespace": f"test-{uuid.uuid4().hex}"}
    values.update(overrides)
    return Settings(**values)


@asynccontextmanager
async def store_for(settings: Settings, *, clear: bool = True) -> AsyncIterator[KpiStore]:
    """The composition root's KpiStore, on a fresh client; with ``clear``, every key of the namespace
    is deleted on exit."""
    runtime = build_runtime(settings)
    try:
        yield runtime.store
    finally:
        try:
            if clear:
                await runtime.store.clear()
        finally:
            await runtime.aclose()


@pytest.fixture(scope="session")
def make_settings() -> SettingsFactory:
    """``make_settings(timezone="Europe/Berlin", ...)``: a fresh namespace each call.

    The namespace is deleted by leaving ``open_store``.
    """
    return new_settings


@pytest.fixture(scope="session")
def open_store() -> StoreOpener:
    """``async with open_store(settings) as store:`` -- cleared and closed on exit
    (``open_store(settings, clear=False)`` leaves the keys to ``namespace_family``)."""
    return store_for


@pytest.fixture
def namespace_family() -> Iterator[SettingsFactory]:
    """Like ``make_settings``, for tests that make many namespaces (hypothesis examples).

    The namespaces are ``test-<uuid>:<n>``, all deleted at teardown by one ``KpiStore.clear()``
    of ``test-<uuid>``: one SCAN of the database per test, not one per example.
    """
    root = f"test-{uuid.uuid4().hex}"
    counter = itertools.count()

    def factory(**overrides: Any) -> Settings:
        return new_settings(**{"namespace": f"{root}:{next(counter)}", **overrides})

    yield factory

    async def clear() -> None:
        async with store_for(new_settings(namespace=root)):
            pass

    asyncio.run(clear())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under ``make test`` (KPI_NO_SKIPS=1) or CI (CI=true) a skipped test fails the run: a test
    that did not run proves nothing, and ``make deps`` provides everything the tests need."""
    if os.environ.get("KPI_NO_SKIPS") != "1" and os.environ.get("CI", "").lower() != "true":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped and exitstatus == pytest.ExitCode.OK:
        reporter.write_line(
            f"{len(skipped)} test(s) skipped: every test must run here (see `make deps`)", red=True
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
