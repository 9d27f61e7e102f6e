"""The backtest's alert states (kpi_app.backtest.alert_state) agree with Prometheus's own rule
engine: ``promtool test rules`` evaluates the same activity patterns with the same ``for`` and
``keep_firing_for`` and must see exactly the alerts ``firing_intervals`` says fire, at every
evaluation. A missing promtool fails the test, it never skips it."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest
import yaml

from kpi_app.backtest.alert_state import firing_intervals
from kpi_app.backtest.prometheus import require_binary

H = 3600
STEPS = 40
KEYS = ("a", "b", "c")


def _patterns(seed: int) -> dict[str, list[int]]:
    rng = random.Random(seed)
    out: dict[str, list[int]] = {}
    for key in KEYS:
        state, values = 0, []
        for _ in range(STEPS):
            if rng.random() < 0.3:
                state = 1 - state
            values.append(state)
        out[key] = values
    return out


@pytest.mark.parametrize(
    ("hold_h", "keep_h", "seed"), [(0, 0, 1), (1, 0, 2), (2, 0, 3), (3, 0, 4), (1, 2, 5), (0, 3, 6)]
)
def test_firing_intervals_match_promtool(tmp_path: Path, hold_h: int, keep_h: int, seed: int) -> None:
    promtool = require_binary("promtool")
    patterns = _patterns(seed)
    times = [k * H for k in range(STEPS)]
    active = {t: {key for key in KEYS if patterns[key][k]} for k, t in enumerate(times)}
    fired = firing_intervals(times, active, hold_h * H, keep_h * H)
    rule: dict[str, object] = {
        "alert": "Up",
        "expr": "x > 0",
        "for": f"{hold_h}h",
        "labels": {"area": "sales"},
    }
    if keep_h:
        rule["keep_firing_for"] = f"{keep_h}h"
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [rule]}]}))
    cases = []
    for t in times:
        firing = sorted(k for k, spans in fired.items() for s, e in spans if s <= t and (e is None or t < e))
        cases.append(
            {
                "eval_time": f"{t // H}h",
                "alertname": "Up",
                "exp_alerts": [{"exp_labels": {"area": "sales", "k": k}} for k in firing],
            }
        )
    series = [{"series": f'x{{k="{k}"}}', "values": " ".join(map(str, patterns[k]))} for k in KEYS]
    test = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1h",
        "tests": [{"interval": "1h", "input_series": series, "alert_rule_test": cases}],
    }
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test))
    done = subprocess.run(
        [promtool, "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert any(fired.values()), "the pattern should make some alert fire"
