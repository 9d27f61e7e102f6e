"""The composition root builds without connecting, on a registry of its own."""

from __future__ import annotations

import asyncio

import pytest

from kpi_app.bootstrap import build_runtime, topic_spec
from kpi_state.settings import Settings

# Nothing listens on port 1: building must not need it.
UNREACHABLE = Settings(redis_url="redis://127.0.0.1:1/0", kafka_url="kafka://127.0.0.1:1", namespace="unit")


def test_building_connects_to_nothing_and_counts_on_its_own_registry() -> None:
    runtime = build_runtime(UNREACHABLE)  # would raise ConnectionError if it connected
    try:
        runtime.ops.record_rejection("invalid_json")
        assert runtime.registry.get_sample_value("kpi_events_rejected_total", {"reason": "invalid_json"}) == 1
        other = build_runtime(UNREACHABLE)
        assert other.registry is not runtime.registry  # never a global one
        asyncio.run(other.aclose())
    finally:
        asyncio.run(runtime.aclose())


def test_topic_spec_names_each_topic_with_its_partitions() -> None:
    s = Settings(topic="ev", topic_partitions=6, dlq_partitions=2, hooks_partitions=3)
    assert topic_spec(s) == {"ev": 6, s.dlq_topic: 2}
    assert topic_spec(s, hooks=True) == {"ev": 6, s.dlq_topic: 2, s.hooks_topic: 3}


def test_the_kafka_side_needs_a_kafka_url() -> None:
    runtime = build_runtime(Settings(redis_url="redis://127.0.0.1:1/0", namespace="unit"))
    try:
        with pytest.raises(ValueError, match="no Kafka URL"):
            runtime.bootstrap()
    finally:
        asyncio.run(runtime.aclose())
