"""The streaming bench's pure helpers (bench/stats.py, bench/cost_model.py), and that every bench
module imports without connecting anywhere."""

from __future__ import annotations

import importlib
import math

import pytest

from bench.cost_model import cost_model
from bench.stats import histogram_quantile, nearest_rank

BENCH_MODULES = (
    "bench.__main__",
    "bench.bench_hooks",
    "bench.bench_replay",
    "bench.bench_scrape",
    "bench.bench_streaming",
    "bench.cost_model",
    "bench.cpu_meter",
    "bench.kafka_baselines",
    "bench.stats",
    "bench.stream_data",
    "bench.streaming_phases",
    "bench.streaming_runner",
    "bench.worker_metrics",
    "bench.worker_processes",
)


@pytest.mark.parametrize("name", BENCH_MODULES)
def test_bench_module_imports(name: str) -> None:
    importlib.import_module(name)


def test_nearest_rank() -> None:
    runs = [float(v) for v in range(20, 0, -1)]  # 20 runs, unordered
    assert nearest_rank(runs, 0.5) == 10.0
    assert nearest_rank(runs, 0.99) == 20.0  # with 20 runs, p99 is the slowest run
    assert nearest_rank(runs, 0.05) == 1.0
    assert nearest_rank([3.0], 0.5) == 3.0
    assert nearest_rank([1.0, 2.0], 1.0) == 2.0


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    buckets = {0.1: 50.0, 0.5: 90.0, 1.0: 100.0, math.inf: 100.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.7, buckets) == pytest.approx(0.1 + 0.4 * 0.5)
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.5 + 0.5 * 0.5)
    # a rank in +Inf: the highest finite bound
    assert histogram_quantile(0.99, {0.1: 50.0, 1.0: 90.0, math.inf: 100.0}) == 1.0
    assert histogram_quantile(0.5, {0.1: 0.0, math.inf: 0.0}) is None


def test_cost_model() -> None:
    result = {
        "events_per_s": 10_000,
        "cpu": {"workers": 0.4, "redis": 0.2, "broker": 0.05, "runner": 0.03, "other": 0.02},
    }
    cost = cost_model(result, cores=2)
    assert cost == {
        "worker_us_per_event": 80.0,
        "redis_us_per_event": 40.0,
        "rest_us_per_event": 20.0,
        "one_worker_ceiling_events_per_s": 12_500,
        "two_worker_ceiling_events_per_s": round(min(1e6 / 40.0, 2e6 / 140.0)),
    }
    assert cost_model({"events_per_s": None, "cpu": result["cpu"]}, 2) is None
    assert cost_model({"events_per_s": 5, "cpu": {}}, 2) is None
