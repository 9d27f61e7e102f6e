"""Regression tests of the hardening defects on the streaming path (real Tansu, Redis, `kpi worker`).

1. A message that once stopped a worker for good (a 1.5 MB non-JSON line, a conflict carrying
   1 MB of unknown field, an event in year 1 under a business timezone west of UTC) is a dead letter now,
   and every valid event around it is applied.
2. New consumer groups on topics that already hold messages apply every event (a message fetched
   while the assignment callback ran was once skipped and acknowledged).
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from kpi_state.settings import Settings
from streams.broker import EmbeddedBroker
from tests.integration.streaming_support import (
    Worker,
    cli_args,
    document,
    kpi,
    make_stream,
    read_dead_letters,
    replay,
    show,
    unique,
    wait_until,
)

pytestmark = pytest.mark.integration

LOS_ANGELES = {"KPI_TIMEZONE": "America/Los_Angeles"}


def _hostile_lines(valid: list[bytes]) -> tuple[list[bytes], dict[str, str]]:
    """Lines that each once stopped a worker, and the dead-letter reason each must get now."""
    created = next(orjson.loads(line) for line in valid if b'"lead.created"' in line)
    at = created["occurred_at"]
    first = {"event_id": "created-first", "type": "deal.created", "occurred_at": at, "deal_id": "d-h"}
    garbage = b"\x01not json " + b"x" * 1_500_000
    year_one = orjson.dumps(dict(created, event_id="year-one", occurred_at="0001-01-01T00:00:00Z"))
    year_max = orjson.dumps(dict(created, event_id="year-max", occurred_at="9999-12-31T23:59:59-08:00"))
    # A second deal.created of a deal is a conflict; its 1 MB unknown field (ignored by validation,
    # kept in the original bytes) makes a 1 MB dead letter.
    conflict = orjson.dumps(dict(first, event_id="conflict-big", note="r" * 1_000_000))
    return [garbage, year_one, year_max, orjson.dumps(first), conflict], {
        "garbage": "invalid_json",
        "year-one": "invalid_timestamp",
        "year-max": "invalid_timestamp",
        "conflict-big": "conflict",
    }


def test_hostile_messages_become_dead_letters_and_the_rest_is_applied(
    broker: EmbeddedBroker,
    tmp_path: Path,
    namespaces: Callable[..., Settings],
    workers: Callable[..., Worker],
) -> None:
    topic = unique("t")
    ws = namespaces(kafka_url=broker.url, topic=topic, consumer_group=unique("g"), **_tz())
    rs = namespaces(**_tz())
    stream = make_stream(ws, days=10, leads_per_day=20, seed=31)
    valid = [line for line in stream.lines if line not in stream.bad]
    hostile, reasons = _hostile_lines(valid)
    # Valid events on both sides of every hostile line, in one partition's order or another.
    lines = list(valid)
    for i, line in enumerate(hostile[:3]):
        lines.insert((i + 1) * len(lines) // 4, line)
    # A deal.created, then the conflicting one (same key, so same partition, in this order).
    lines[len(lines) // 2 : len(lines) // 2] = hostile[3:]
    path = stream.write(tmp_path / "hostile.jsonl", lines)

    worker = workers(ws, LOS_ANGELES)
    worker.wait_ready()
    kpi("send", str(path), "--raw", "--kafka-url", broker.url, "--topic", topic)

    # kpi replay of the same stream exits 0 (kpi() asserts it) with the bad lines rejected.
    rejects = tmp_path / "rejects.jsonl"
    kpi("replay", str(path), "--no-progress", "--rejects", str(rejects), *cli_args(rs), env=_env())
    rejected = [orjson.loads(line) for line in rejects.read_bytes().splitlines()]
    by_reason = Counter(r["reason"] for r in rejected)
    assert by_reason["invalid_json"] == 1
    assert by_reason["invalid_timestamp"] == 2
    assert by_reason["conflict"] == 1
    assert sum(by_reason.values()) == 4

    as_of = datetime.now(UTC).replace(microsecond=0)
    expected = document(rs, as_of)  # read in the business timezone of the data
    assert expected["windows"]["all"]["total"]["leads"] > 0
    wait_until(lambda: document(ws, as_of) == expected, 60, "every valid event applied", worker)

    letters = asyncio.run(read_dead_letters(broker.bootstrap, ws.dlq_topic, len(reasons)))
    got: dict[str, dict[str, str]] = {}
    for value, headers in letters:
        if headers["dlq.reason"] == "invalid_json":
            got["garbage"] = headers
            assert len(value) <= 256 * 1024 and value == hostile[0][: len(value)]
        else:
            got[orjson.loads(value)["event_id"] if "dlq.truncated" not in headers else "conflict-big"] = (
                headers
            )
    assert {k: h["dlq.reason"] for k, h in got.items()} == reasons
    assert got["garbage"]["dlq.truncated"] == str(len(hostile[0]))
    assert got["conflict-big"]["dlq.truncated"] == str(len(hostile[4]))
    assert got["year-one"]["dlq.field"] == "occurred_at"
    assert worker.health() == 200
    log = worker.log.read_text(errors="replace")
    assert "worker.batch_abandoned" not in log and "worker.batch_retry" not in log


def test_fresh_groups_on_prefilled_topics_apply_everything(
    broker: EmbeddedBroker,
    tmp_path: Path,
    namespaces: Callable[..., Settings],
    workers: Callable[..., Worker],
) -> None:
    """Six new consumer groups, each started on a topic that already holds every message (so the
    first fetches race the assignment callback), each end with exactly the replayed state."""
    topic = unique("t")
    base = namespaces(kafka_url=broker.url, topic=topic, consumer_group=unique("g"))
    rs = namespaces()
    stream = make_stream(base, days=5, leads_per_day=40, seed=32)
    path = stream.write(tmp_path / "events.jsonl")
    # One event per message: many messages in every partition when the group starts.
    kpi("send", str(path), "--batch", "1", "--kafka-url", broker.url, "--topic", topic)
    replay(rs, tmp_path, path)
    as_of = datetime.now(UTC).replace(microsecond=0)
    expected = show(rs, as_of)

    for round_ in range(3):
        started = []
        for _ in range(2):  # two groups at a time: each its own namespace, all partitions its own
            ws = namespaces(kafka_url=broker.url, topic=topic, consumer_group=unique(f"g{round_}"))
            started.append((ws, workers(ws)))
        for ws, worker in started:
            wait_until(lambda ws=ws: document(ws, as_of) == expected, 90, "fresh group applied all", worker)
        for _, worker in started:
            worker.stop()


def _tz() -> dict[str, str]:
    return {"timezone": LOS_ANGELES["KPI_TIMEZONE"]}


def _env() -> dict[str, str]:
    return {**os.environ, **LOS_ANGELES}
