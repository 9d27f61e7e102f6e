"""Dashboards to the JSON files Grafana provisions (grafana/dashboards/).

Contract: ``render`` is deterministic (sorted keys, 2-space indent, UTF-8, one trailing
newline), so ``make dashboards`` on a clean checkout leaves the tree unchanged and the
unit test can compare the committed files byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.cog.encoder import JSONEncoder

from dashboards import operations, sales_wall

OUT_DIR = Path(__file__).resolve().parents[1] / "grafana" / "dashboards"

# File name -> builder of the dashboard it holds.
DASHBOARDS: dict[str, Callable[[], dash.Dashboard]] = {
    sales_wall.FILE: sales_wall.build,
    operations.FILE: operations.build,
}


def as_document(board: dash.Dashboard) -> dict[str, Any]:
    """The dashboard as plain JSON data (what Grafana reads)."""
    data = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    if not isinstance(data, dict):
        raise TypeError("a dashboard serialises to a JSON object")
    return data


def render(board: dash.Dashboard) -> str:
    return json.dumps(as_document(board), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def rendered() -> dict[str, str]:
    """File name -> the text ``make dashboards`` writes there."""
    return {name: render(build()) for name, build in DASHBOARDS.items()}


def main(out_dir: Path = OUT_DIR) -> int:
    for name, text in rendered().items():
        path = out_dir / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    return 0
