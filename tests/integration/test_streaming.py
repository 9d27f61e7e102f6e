"""The streaming path end to end: `kpi send` -> Tansu -> `kpi worker` (faust) -> Redis -> `kpi show`.

Real services only: the embedded broker (Tansu), the test Redis, a `redis-server` child with AOF
for the persistence test, and the real CLI in subprocesses. The reference is always `kpi replay`
of the same file into another namespace: the `kpi show --format json` documents (same `--as-of`)
must be equal. Every test has its own namespaces, topic and consumer group, and leaves no process
behind.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from kpi_state.events import EventParser, Rejection
from kpi_state.settings import Settings
from streams.broker import EmbeddedBroker
from streams.producer import EventProducer
from tests.integration.streaming_support import (
    KPI,
    RedisServer,
    Worker,
    converge,
    kpi,
    make_stream,
    partitions_of,
    read_dead_letters,
    replay,
    show,
    unique,
    wait_until,
)

pytestmark = pytest.mark.integration


# -- tests -------------------------------------------------------------------------------------


def test_send_to_show_equals_replay_with_dead_letters(
    broker: EmbeddedBroker,
    tmp_path: Path,
    namespaces: Callable[..., Settings],
    workers: Callable[..., Worker],
) -> None:
    """One worker: `kpi send` (batches of 100), `kpi send --raw` of the bad lines and a batch
    message mixing good and bad events. State equals `kpi replay`; every bad event is one dead
    letter with its reason and field, counted in kpi_events_rejected_total; the worker stays up."""
    topic = unique("t")
    ws = namespaces(kafka_url=broker.url, topic=topic, consumer_group=unique("g"))
    rs = namespaces()
    stream = make_stream(ws, days=20, leads_per_day=30, seed=11)
    # A valid deal.created: the stream's bad lines include invalid copies of such events.
    created = next(
        orjson.loads(line) for line in stream.lines if b'"deal.created"' in line and line not in stream.bad
    )
    conflict = orjson.dumps(dict(created, event_id="conflict-copy"))  # a second deal.created
    stream.lines.insert(stream.lines.index(orjson.dumps(created)) + 1, conflict)
    main = stream.write(tmp_path / "events.jsonl")
    bad = stream.write(tmp_path / "bad.jsonl", list(stream.bad))
    now = datetime.now(UTC)
    good = [
        dict(created, event_id="mixed-1", deal_id="mixed-deal-1"),
        dict(created, event_id="mixed-2", deal_id="mixed-deal-2"),
    ]
    # (one fault per bad event: which of several missing fields is reported is not specified)
    stamp = now.isoformat()
    bad_1 = {"event_id": "mixed-bad-1", "type": "lead.created", "occurred_at": stamp}
    bad_2 = {"event_id": "mixed-bad-2", "type": "deal.exploded", "occurred_at": stamp}
    mixed = [good[0], bad_1, good[1], bad_2]
    extra = stream.write(tmp_path / "extra.jsonl", [orjson.dumps(e) for e in good])

    worker = workers(ws)
    worker.wait_ready()
    sent = kpi("send", str(main), "--kafka-url", broker.url, "--topic", topic, "--json")
    summary = orjson.loads(sent.stdout)
    expected_skips = Counter(r.reason for r in stream.bad.values())
    assert summary["rejected_by_reason"] == dict(expected_skips)
    assert summary["events"] == len(stream.lines) - len(stream.bad)
    assert summary["messages"] == -(-summary["events"] // 100)
    for reason, n in expected_skips.items():
        assert f"skipped {reason}: {n:,}" in sent.stderr
    kpi("send", str(bad), "--raw", "--kafka-url", broker.url, "--topic", topic)

    async def send_mixed() -> None:
        async with EventProducer(broker.bootstrap, topic) as producer:
            await producer.send_raw(b"mixed", orjson.dumps(mixed), wait=True)

    asyncio.run(send_mixed())

    replay(rs, tmp_path, main, extra)
    as_of = now.replace(microsecond=0)
    converge(ws, show(rs, as_of), as_of, worker)

    parser = EventParser(ws)
    expected = Counter((line, r.reason, r.field, None) for line, r in stream.bad.items())
    for i, item in enumerate(mixed):
        outcome = parser.parse_object(item, now)
        if isinstance(outcome, Rejection):
            expected[(orjson.dumps(item), outcome.reason, outcome.field, str(i))] += 1
    letters = asyncio.run(read_dead_letters(broker.bootstrap, ws.dlq_topic, sum(expected.values()) + 1))
    conflicts = [(v, h) for v, h in letters if h["dlq.reason"] == "conflict"]
    assert len(conflicts) == 1 and conflicts[0][1]["dlq.field"] == "deal_id"
    assert orjson.loads(conflicts[0][0])["event_id"] in {"conflict-copy", created["event_id"]}
    got = Counter(
        (v, h["dlq.reason"], h.get("dlq.field"), h.get("dlq.index"))
        for v, h in letters
        if (v, h) not in conflicts
    )
    assert got == expected
    assert all(h["dlq.topic"] == topic and int(h["dlq.offset"]) >= 0 for _, h in letters)

    rejected = {k: v for k, v in worker.metrics().items() if k.startswith("kpi_events_rejected_total") and v}
    by_reason = Counter(reason for _, reason, _, _ in expected.elements()) + Counter({"conflict": 1})
    assert rejected == {f'kpi_events_rejected_total{{reason="{r}"}}': float(n) for r, n in by_reason.items()}
    assert worker.health() == 200


def test_two_workers_one_killed_mid_stream(
    broker: EmbeddedBroker,
    tmp_path: Path,
    namespaces: Callable[..., Settings],
    workers: Callable[..., Worker],
) -> None:
    """Two workers share the partitions; one is SIGKILLed (with its faust child) mid-stream and a
    new one started. Messages: one line each (`--raw` for the first half, bad lines included;
    `--batch 1` for the second). The final state equals `kpi replay` of the whole file."""
    topic = unique("t")
    ws = namespaces(kafka_url=broker.url, topic=topic, consumer_group=unique("g"))
    rs = namespaces()
    stream = make_stream(ws, days=45, leads_per_day=40, seed=12)
    half = len(stream.lines) // 2
    whole = stream.write(tmp_path / "all.jsonl")
    first = stream.write(tmp_path / "first.jsonl", stream.lines[:half])
    second = stream.write(tmp_path / "second.jsonl", stream.lines[half:])
    replay(rs, tmp_path, whole)
    as_of = datetime.now(UTC).replace(microsecond=0)
    expected = show(rs, as_of)

    a, b = workers(ws), workers(ws)
    a.wait_ready()
    b.wait_ready()
    kpi("send", str(first), "--raw", "--kafka-url", broker.url, "--topic", topic)
    wait_until(lambda: a.processed() > 500, 30, "worker a applying", a)
    a.signal(signal.SIGKILL)
    a.proc.wait()
    kpi("send", str(second), "--batch", "1", "--kafka-url", broker.url, "--topic", topic)
    c = workers(ws)
    converge(ws, expected, as_of, c)

    bad_first = {line for line in stream.lines[:half] if line in stream.bad}
    letters = asyncio.run(read_dead_letters(broker.bootstrap, ws.dlq_topic, len(bad_first)))
    assert {v for v, _ in letters} == bad_first  # at least once each, nothing else
    assert b.health() == 200 and c.health() == 200
    skipped = sum(w.metrics()["kpi_events_redelivered_total"] for w in (b, c))
    print(f"events skipped by the watermark after the kill: {skipped:.0f}")


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH")
    (tmp_path / "aof").mkdir()
    server = RedisServer(tmp_path / "aof")
    server.start()
    try:
        yield server
    finally:
        server.kill()


def test_worker_survives_redis_and_broker_restarts(
    tmp_path: Path,
    aof_redis: RedisServer,
    namespaces: Callable[..., Settings],
    workers: Callable[..., Worker],
) -> None:
    """One worker, its own broker and an AOF Redis:

    1. Redis killed mid-stream and restarted on the same directory: nothing lost or doubled.
    2. Redis restarted from an older copy of its directory (it lost writes the worker had
       committed to Kafka, as a lost last second of AOF would): the worker notices, rewinds to the
       Redis watermarks and applies the lost part again.
    3. The broker restarted (every topic, message and offset gone): the worker re-creates the
       topics and applies what is sent afterwards, from offset 0 again.
    """
    topic = unique("t")
    rs = namespaces()
    with EmbeddedBroker() as broker:
        ws = namespaces(
            kafka_url=broker.url, topic=topic, consumer_group=unique("g"), redis_url=aof_redis.url
        )
        stream = make_stream(ws, days=30, leads_per_day=30, seed=13)
        valid = [line for line in stream.lines if line not in stream.bad]
        third = len(valid) // 3
        cuts = [0, third, 2 * third, len(valid)]
        parts = [stream.write(tmp_path / f"part{i}.jsonl", valid[cuts[i] : cuts[i + 1]]) for i in range(3)]
        as_of = datetime.now(UTC).replace(microsecond=0)
        worker = workers(ws)
        worker.wait_ready()

        def send(part: Path) -> subprocess.Popen[bytes]:
            argv = [*KPI, "send", str(part), "--batch", "1", "--kafka-url", broker.url, "--topic", topic]
            return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        # 1. kill -9 and restart on the same directory, mid-stream.
        sending = send(parts[0])
        wait_until(lambda: worker.processed() > third // 5, 30, "first part being applied", worker)
        aof_redis.kill()
        time.sleep(1.0)
        aof_redis.start()
        assert sending.wait(60) == 0
        replay(rs, tmp_path, parts[0])
        converge(ws, show(rs, as_of), as_of, worker)

        # 2. Back to an older copy of the data: writes the worker committed are gone.
        time.sleep(1.5)  # let the AOF reach the disk (everysec)
        snapshot = tmp_path / "aof-snapshot"
        shutil.copytree(aof_redis.dir, snapshot)
        before = worker.processed()
        sending = send(parts[1])
        assert sending.wait(60) == 0
        wait_until(lambda: worker.processed() - before > third // 2, 30, "second part being applied", worker)
        time.sleep(3.5)  # faust commits offsets every 2.8 s: make Kafka run ahead of the rolled-back Redis
        aof_redis.kill()
        shutil.rmtree(aof_redis.dir)
        shutil.copytree(snapshot, aof_redis.dir)
        aof_redis.start()
        replay(rs, tmp_path, parts[1])
        converge(ws, show(rs, as_of), as_of, worker)
        assert "worker.watermarks_lost" in worker.log.read_text(errors="replace")

        # 3. The broker restarts empty: topics re-created by the worker, offsets from 0 again.
        broker.restart()
        wait_until(
            lambda: partitions_of(broker.bootstrap, topic) == ws.topic_partitions,
            60,
            "topic re-created by the worker",
            worker,
        )
        worker.wait_ready()
        assert send(parts[2]).wait(60) == 0
        replay(rs, tmp_path, parts[2])
        converge(ws, show(rs, as_of), as_of, worker)
        log = worker.log.read_text(errors="replace")
        assert any(e in log for e in ("worker.topic_identity_changed", "worker.topic_gone"))
        worker.stop()  # while the broker is up: a faust stop without a broker waits for it
