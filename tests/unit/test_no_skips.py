"""Under `make test` or CI a skipped test fails the run (tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_a_skipping_test(tmp_path: Path, **env: str) -> int:
    """Exit code of a pytest run, with ``env``, of one passing and one skipped test."""
    tmp_path.mkdir()
    (tmp_path / "conftest.py").write_text("from tests.conftest import pytest_sessionfinish  # noqa: F401\n")
    (tmp_path / "test_skips.py").write_text(
        "import pytest\n\ndef test_ok():\n    pass\n\ndef test_skipped():\n    pytest.skip('no tool')\n"
    )
    clean = {k: v for k, v in os.environ.items() if k not in ("CI", "KPI_NO_SKIPS")}
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)]
    done = subprocess.run(
        argv, env={**clean, "PYTHONPATH": str(ROOT), **env}, cwd=tmp_path, capture_output=True, check=False
    )
    return done.returncode


def test_a_skip_fails_the_run_under_make_test_and_ci(tmp_path: Path) -> None:
    assert run_a_skipping_test(tmp_path / "plain") == 0
    assert run_a_skipping_test(tmp_path / "ci", CI="true") == 1
    assert run_a_skipping_test(tmp_path / "make", KPI_NO_SKIPS="1") == 1
