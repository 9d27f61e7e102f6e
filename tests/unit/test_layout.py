"""The packages depend on each other in one direction only (README "Where things are defined"):

    kpi_app  ->  streams  ->  connectors, kpi_state        dashboards (build time, stand-alone)

`kpi_state` (KPI math, windows, the Redis store, the collector) knows nothing of Kafka or of the
application; `connectors` (CRM records -> events) is pure translation; `streams` (the Kafka side)
never reaches back up into the application. An import against the arrow fails here, not in a
review.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("kpi_state", "connectors", "streams", "kpi_app", "dashboards")
# What each package may import from the project.
ALLOWED: dict[str, frozenset[str]] = {
    "kpi_state": frozenset({"kpi_state"}),
    "connectors": frozenset({"connectors", "kpi_state"}),
    "streams": frozenset({"streams", "connectors", "kpi_state"}),
    "kpi_app": frozenset({"kpi_state", "connectors", "streams", "kpi_app"}),
    # Generated into grafana/dashboards/ at build time; tests check its names against the collector.
    "dashboards": frozenset({"dashboards"}),
}


def project_imports(path: Path) -> set[tuple[str, int]]:
    """The project packages ``path`` imports, with the line of each import (also inside functions)."""
    found: set[tuple[str, int]] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            if top in PACKAGES:
                found.add((top, node.lineno))
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_follow_the_layers(package: str) -> None:
    files = sorted((REPO / package).rglob("*.py"))
    assert files, f"no modules found under {package}/"
    wrong = [
        f"{path.relative_to(REPO)}:{line} imports {top}"
        for path in files
        for top, line in sorted(project_imports(path))
        if top not in ALLOWED[package]
    ]
    assert not wrong, f"{package} may import only {sorted(ALLOWED[package])}:\n" + "\n".join(wrong)


def test_the_checker_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from kpi_app.cli import app\n    import streams.worker\n")
    assert project_imports(module) == {("kpi_app", 2), ("streams", 3)}
