"""The embedded broker (real Tansu), topic administration, the producer and a bare faust agent."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import MutableMapping
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import UnknownTopicOrPartitionError
from structlog.testing import capture_logs

from kpi_state.settings import Settings
from streams.broker import EmbeddedBroker, bootstrap_servers, free_port, kafka_answers
from streams.producer import EventProducer, event_key
from streams.topics import (
    KafkaInspector,
    ensure_topics,
    high_watermarks,
    partition_count,
    topic_identity,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def topic() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def baselines() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kafka_baselines", REPO / "bench" / "kafka_baselines.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def _alive(pid: int) -> bool:
    """False once the process is gone or a zombie (an orphan's reaper may be slow)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (FileNotFoundError, IndexError):
        return False


async def _read_all(bootstrap: str, topic: str, n: int) -> list[tuple[int, bytes | None, bytes]]:
    partitions = await partition_count(bootstrap, topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        await consumer.seek_to_beginning()
        got: list[tuple[int, bytes | None, bytes]] = []
        deadline = time.monotonic() + 10
        while len(got) < n and time.monotonic() < deadline:
            for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                got += [(tp.partition, r.key, r.value) for r in records]
        return got
    finally:
        await consumer.stop()


def test_bootstrap_servers_accepts_faust_urls_and_bare_addresses() -> None:
    assert bootstrap_servers("kafka://127.0.0.1:9092") == "127.0.0.1:9092"
    assert bootstrap_servers("kafka://a:1,b:2") == "a:1,b:2"
    assert bootstrap_servers("kafka://a:1;kafka://b") == "a:1,b:9092"
    assert bootstrap_servers("a:1") == "a:1"
    with pytest.raises(ValueError, match="scheme"):
        bootstrap_servers("http://a:1")


def test_broker_answers_kafka_requests(broker: EmbeddedBroker) -> None:
    assert broker.running
    assert broker.url == f"kafka://127.0.0.1:{broker.port}"
    assert broker.bootstrap == f"127.0.0.1:{broker.port}"
    assert kafka_answers("127.0.0.1", broker.port)


def test_topics_are_created_with_configured_partitions_before_use(broker: EmbeddedBroker, topic: str) -> None:
    settings = Settings(topic=topic)
    assert settings.topic_partitions == 8
    wanted = {settings.topic: settings.topic_partitions, settings.dlq_topic: settings.dlq_partitions}

    async def scenario() -> None:
        await ensure_topics(broker.bootstrap, wanted)
        await ensure_topics(broker.bootstrap, wanted)  # idempotent
        assert await partition_count(broker.bootstrap, settings.topic) == 8
        assert await partition_count(broker.bootstrap, settings.dlq_topic) == 1
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(settings.topic, b"{}", partition=7)
        finally:
            await producer.stop()
        assert await partition_count(broker.bootstrap, settings.topic) == 8

    asyncio.run(scenario())


def test_a_topic_touched_before_ensure_topics_keeps_tansus_4_partitions(
    broker: EmbeddedBroker, topic: str
) -> None:
    async def scenario() -> tuple[int, list[MutableMapping[str, Any]]]:
        async with EventProducer(broker.bootstrap, topic) as producer:
            await producer.send_raw(None, b"{}", wait=True)  # auto-creates the topic
        with capture_logs() as logs:
            await ensure_topics(broker.bootstrap, {topic: 8})
        return await partition_count(broker.bootstrap, topic), logs

    count, logs = asyncio.run(scenario())
    assert count == 4
    assert any(entry["event"] == "kafka.topic_partitions_differ" for entry in logs)


def test_inspecting_a_missing_topic_does_not_create_it(broker: EmbeddedBroker, topic: str) -> None:
    async def scenario() -> None:
        async with KafkaInspector(broker.bootstrap) as inspector:
            with pytest.raises(UnknownTopicOrPartitionError):
                await inspector.partition_count(topic)
            with pytest.raises(UnknownTopicOrPartitionError):
                await inspector.topic(topic)

    asyncio.run(scenario())


def test_producer_round_trip(broker: EmbeddedBroker, topic: str) -> None:
    single = {"event_id": "e1", "type": "deal.won", "deal_id": "d1", "lead_id": "l1", "customer_id": "c1"}
    batch = [{"event_id": f"b{i}", "type": "lead.created", "lead_id": f"l{i}"} for i in range(3)]

    async def scenario() -> list[tuple[int, bytes | None, bytes]]:
        await ensure_topics(broker.bootstrap, {topic: 8})
        async with EventProducer(broker.bootstrap, topic) as producer:
            await producer.send_event(single)
            await producer.send_batch(batch, wait=True)
            await producer.send_raw(b"k", b"not json")
            assert await producer.send_events(batch * 5, events_per_message=4) == 4
        return await _read_all(broker.bootstrap, topic, 7)

    got = asyncio.run(scenario())
    assert len(got) == 7
    by_value = {value: key for _, key, value in got}
    assert by_value[orjson.dumps(single)] == b"d1"
    assert by_value[orjson.dumps(batch)] == b"l0"
    assert by_value[b"not json"] == b"k"
    arrays = [orjson.loads(v) for _, _, v in got if v.startswith(b"[")]
    assert sorted(len(a) for a in arrays) == [3, 3, 4, 4, 4]


def test_event_key_precedence() -> None:
    assert event_key({"event_id": "e", "customer_id": "c", "lead_id": "l", "deal_id": "d"}) == b"d"
    assert event_key({"event_id": "e", "customer_id": "c", "lead_id": "l", "deal_id": None}) == b"l"
    assert event_key({"event_id": "e", "customer_id": "c"}) == b"c"
    assert event_key({"event_id": "e"}) == b"e"
    assert event_key({}) == b""


def test_high_watermarks_count_every_message(broker: EmbeddedBroker, topic: str) -> None:
    async def scenario() -> dict[int, int]:
        await ensure_topics(broker.bootstrap, {topic: 4})
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=50)
        await producer.start()
        try:
            for partition in range(3):  # partition p gets 10 * p messages in a few batches
                futures = [
                    await producer.send(topic, b"x", partition=partition) for _ in range(10 * partition)
                ]
                await asyncio.gather(*futures)
                await producer.send_and_wait(topic, b"last", partition=partition)
        finally:
            await producer.stop()
        return await high_watermarks(broker.bootstrap, topic)

    assert asyncio.run(scenario()) == {0: 1, 1: 11, 2: 21, 3: 0}


def test_bare_faust_agent_consumes(broker: EmbeddedBroker, topic: str, baselines: ModuleType) -> None:
    asyncio.run(ensure_topics(broker.bootstrap, {topic: 8}))
    filled = asyncio.run(baselines.fill_topic(broker.bootstrap, topic, 2000, 1))
    assert filled.messages == 2000
    rate = baselines.bare_faust_rate(broker.bootstrap, topic, 2000, timeout=60)
    assert 1500 <= rate.messages <= 2000  # the first batch (<= 500) only starts the clock
    assert rate.msgs_per_s > 0
    assert rate.startup_seconds > 0


def test_restart_loses_data_and_changes_topic_identity(topic: str) -> None:
    with EmbeddedBroker() as broker:
        port = broker.port

        async def before() -> str:
            await ensure_topics(broker.bootstrap, {topic: 8})
            async with EventProducer(broker.bootstrap, topic) as producer:
                await producer.send_events(({"event_id": str(i)} for i in range(10)), events_per_message=1)
            assert sum((await high_watermarks(broker.bootstrap, topic)).values()) == 10
            return await topic_identity(broker.bootstrap, topic)

        first = asyncio.run(before())
        assert first == asyncio.run(topic_identity(broker.bootstrap, topic))  # stable while running
        old_pid = broker.pid
        broker.restart()
        assert broker.port == port and broker.pid != old_pid

        async def after() -> str:
            with pytest.raises(UnknownTopicOrPartitionError):
                await partition_count(broker.bootstrap, topic)
            await ensure_topics(broker.bootstrap, {topic: 8})
            assert await partition_count(broker.bootstrap, topic) == 8
            assert await high_watermarks(broker.bootstrap, topic) == dict.fromkeys(range(8), 0)
            return await topic_identity(broker.bootstrap, topic)

        assert asyncio.run(after()) != first


def test_ensure_topics_waits_for_a_broker_that_starts_later(topic: str) -> None:
    broker = EmbeddedBroker(free_port())

    async def scenario() -> int:
        waiting = asyncio.create_task(ensure_topics(broker.bootstrap, {topic: 3}, timeout=20))
        await asyncio.sleep(0.7)
        assert not waiting.done()
        broker.start()  # blocks the loop for ~40 ms; the task retries afterwards
        await waiting
        return await partition_count(broker.bootstrap, topic)

    try:
        assert asyncio.run(scenario()) == 3
    finally:
        broker.stop()


def test_stop_leaves_no_tansu_process() -> None:
    broker = EmbeddedBroker().start()
    pid = broker.pid
    assert pid is not None and _alive(pid)
    assert broker.stop() == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not kafka_answers("127.0.0.1", broker.port, timeout=0.2)
    assert broker.stop() == 0  # idempotent


def _python(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def _reap(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def test_broker_dies_with_a_killed_owner() -> None:
    owner = _python(
        "import time; from streams.broker import EmbeddedBroker; b = EmbeddedBroker().start(); "
        "print('PID', b.pid, flush=True); time.sleep(60)"
    )
    try:
        assert owner.stdout is not None
        line = b""
        while not line.startswith(b"PID "):  # structlog may print first
            line = owner.stdout.readline()
            assert line, "the owner exited early"
        tansu_pid = int(line.split()[1])
        assert _alive(tansu_pid)
        owner.kill()
    finally:
        _reap(owner)
    deadline = time.monotonic() + 5
    while _alive(tansu_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(tansu_pid)


def test_foreground_broker_stops_on_sigint() -> None:
    port = free_port()
    proc = _python(f"import sys; from streams.broker import run_broker_foreground as r; sys.exit(r({port}))")
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().decode().strip() == f"kafka://127.0.0.1:{port}"
        assert kafka_answers("127.0.0.1", port)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        _reap(proc)
    assert not kafka_answers("127.0.0.1", port, timeout=0.2)
