"""The CLI's log configuration keeps tracebacks (issue 15, defect 6)."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest
import structlog

from kpi_app.cli import configure_logging


@pytest.fixture
def restore_structlog() -> Iterator[None]:
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.mark.usefixtures("restore_structlog")
def test_log_exception_carries_the_stack(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging()  # binds the current sys.stderr, which capsys captures

    def fail_deep() -> None:
        raise ValueError("boom-marker")

    try:
        fail_deep()
    except ValueError:
        structlog.get_logger("t").exception("thing.failed", item=3)
    structlog.get_logger("t").error("plain", exc_info=False)
    lines = [orjson.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    failed = next(entry for entry in lines if entry["event"] == "thing.failed")
    assert failed["level"] == "error" and failed["item"] == 3
    assert "exc_info" not in failed
    assert "Traceback (most recent call last)" in failed["exception"]
    assert "in fail_deep" in failed["exception"]
    assert "ValueError: boom-marker" in failed["exception"]
    plain = next(entry for entry in lines if entry["event"] == "plain")
    assert "exception" not in plain
