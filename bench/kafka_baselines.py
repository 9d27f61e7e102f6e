"""Baselines for the throughput targets of DESIGN section 6, measured against the same broker and topic.

- ``fill_topic``: a topic full of synthetic, valid CRM events (one object or a JSON array per message);
- ``bare_aiokafka_rate``: what a plain aiokafka consumer reads per second, with JSON decoding;
- ``bare_faust_rate``: what a bare faust agent built by ``streams.faust_app.make_app`` (the worker's
  settings, ``stream.take(500, within=...)``, concurrency 1) reads per second, counting messages
  only, in a subprocess of its own.

``python bench/kafka_baselines.py --messages 50000`` runs all three against an embedded broker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from streams.broker import free_port
from streams.childproc import stop_groups
from streams.producer import EventProducer
from streams.topics import KafkaInspector

STAGES = ("prospecting", "qualification", "proposal", "negotiation")
_TYPES = (  # (type, weight): a funnel-shaped mix
    ("lead.created", 30),
    ("lead.qualified", 10),
    ("deal.created", 15),
    ("deal.stage_changed", 15),
    ("deal.won", 5),
    ("deal.lost", 5),
    ("spend.recorded", 6),
    ("revenue.recorded", 6),
    ("survey.answered", 6),
    ("customer.churned", 2),
)


@dataclass(frozen=True, slots=True)
class Rate:
    messages: int
    events: int
    seconds: float
    startup_seconds: float = 0.0  # process start / subscribe -> first message

    @property
    def msgs_per_s(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def synthetic_events(
    n: int, *, run_id: str, seed: int = 0, now: datetime | None = None
) -> Iterator[dict[str, Any]]:
    """``n`` valid events of every type, unique ``event_id``s, ``occurred_at`` within the last 30 days.

    Entity ids never conflict (each created lead/deal/terminal deal gets its own id); qualifications,
    stage changes and revenue refer to earlier entities, so joins have something to find.
    """
    rng = random.Random(seed)
    now = now or datetime.now(UTC)
    types = [t for t, _ in _TYPES]
    weights = [w for _, w in _TYPES]
    leads: list[str] = []
    deals: list[str] = []
    customers: list[str] = []
    for k, kind in enumerate(rng.choices(types, weights, k=n)):
        at = now - timedelta(seconds=rng.uniform(60, 30 * 86400))
        event: dict[str, Any] = {
            "event_id": f"{run_id}-{k}",
            "type": kind,
            "occurred_at": at.isoformat(timespec="seconds").replace("+00:00", "Z"),
        }
        rep = f"rep-{rng.randrange(50)}"
        lead = rng.choice(leads) if leads else None
        if kind == "lead.created":
            lead = f"{run_id}-L{k}"
            leads.append(lead)
            event |= {
                "lead_id": lead,
                "source": f"src-{rng.randrange(10)}",
                "segment": f"seg-{rng.randrange(5)}",
                "rep_id": rep,
            }
        elif kind == "lead.qualified":
            event["lead_id"] = lead or f"{run_id}-L{k}"
        elif kind == "deal.created":
            deal = f"{run_id}-D{k}"
            deals.append(deal)
            event |= {"deal_id": deal, "rep_id": rep, "amount": float(rng.randrange(1_000, 50_000))}
            if lead:
                event["lead_id"] = lead
        elif kind == "deal.stage_changed":
            event |= {
                "deal_id": rng.choice(deals) if deals else f"{run_id}-D{k}",
                "to_stage": rng.choice(STAGES),
            }
        elif kind in ("deal.won", "deal.lost"):
            event |= {"deal_id": f"{run_id}-T{k}", "rep_id": rep}
            if lead:
                event["lead_id"] = lead
            if kind == "deal.won":
                customer = f"{run_id}-C{k}"
                customers.append(customer)
                event |= {"customer_id": customer, "amount": float(rng.randrange(1_000, 50_000))}
        elif kind == "spend.recorded":
            event |= {
                "amount": float(rng.randrange(100, 5_000)),
                "category": rng.choice(("marketing", "sales")),
                "source": f"src-{rng.randrange(10)}",
            }
        elif kind == "revenue.recorded":
            event |= {
                "customer_id": rng.choice(customers) if customers else f"{run_id}-C{k}",
                "amount": float(rng.randrange(100, 5_000)),
                "gross_margin": round(rng.uniform(0.5, 0.9), 2),
            }
        elif kind == "survey.answered":
            survey = rng.choice(("nps", "csat"))
            event |= {"kind": survey, "score": rng.randint(0, 10) if survey == "nps" else rng.randint(1, 5)}
        else:  # customer.churned
            event["customer_id"] = rng.choice(customers) if customers else f"{run_id}-C{k}"
        yield event


async def fill_topic(
    bootstrap: str,
    topic: str,
    n_messages: int,
    events_per_message: int = 1,
    *,
    run_id: str | None = None,
    seed: int = 0,
) -> Rate:
    """Produce ``n_messages`` messages of ``events_per_message`` synthetic events each (1: a JSON
    object per message, else a JSON array) and wait for every acknowledgment."""
    run_id = run_id or uuid.uuid4().hex[:8]
    events = synthetic_events(n_messages * events_per_message, run_id=run_id, seed=seed)
    started = time.perf_counter()
    async with EventProducer(bootstrap, topic, linger_ms=20) as producer:
        sent = await producer.send_events(events, events_per_message=events_per_message, wait=True)
    return Rate(messages=sent, events=n_messages * events_per_message, seconds=time.perf_counter() - started)


async def bare_aiokafka_rate(bootstrap: str, topic: str, n: int, *, timeout: float = 120.0) -> Rate:  # noqa: ASYNC109
    """Read ``n`` messages from the beginning of every partition (no group), JSON-decoding each."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async with KafkaInspector(bootstrap) as inspector:
        partitions = await inspector.partition_count(topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        await consumer.seek_to_beginning()
        messages = events = 0
        started = time.perf_counter()
        deadline = started + timeout
        while messages < n:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"read {messages} of {n} messages in {timeout} s")
            batches = await consumer.getmany(timeout_ms=200, max_records=10_000)
            for records in batches.values():
                for record in records:
                    value = orjson.loads(record.value)
                    events += len(value) if isinstance(value, list) else 1
                messages += len(records)
        return Rate(messages=messages, events=events, seconds=time.perf_counter() - started)
    finally:
        await consumer.stop()


def bare_faust_rate(
    bootstrap: str,
    topic: str,
    n: int,
    *,
    web_port: int | None = None,
    take: int = 500,
    within: float = 0.2,
    timeout: float = 180.0,
    app_overrides: dict[str, Any] | None = None,
) -> Rate:
    """Run a bare faust agent in a subprocess until it has counted ``n`` messages.

    ``seconds`` covers the messages after the first batch (steady state); ``startup_seconds`` is
    process start -> first batch (imports, group join, first fetch). ``app_overrides`` (JSON values)
    go to ``make_app``, for a benchmark that tunes the worker's faust settings.
    """
    with tempfile.TemporaryDirectory(prefix="kpi-bench-") as tmp:
        result_path = Path(tmp) / "result.json"
        spec = {
            "bootstrap": bootstrap,
            "topic": topic,
            "n": n,
            "web_port": web_port or free_port(),
            "take": take,
            "within": within,
            "result": str(result_path),
            "app_id": f"bench-bare-faust-{uuid.uuid4().hex[:8]}",
            "overrides": app_overrides or {},
        }
        with open(Path(tmp) / "output.log", "wb") as output:
            proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--faust-child", json.dumps(spec)],
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                stop_groups([proc], 0)
        if not result_path.exists():
            log_tail = (Path(tmp) / "output.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"bare faust agent gave no result (exit {proc.returncode}):\n{log_tail}")
        data = json.loads(result_path.read_text())
    return Rate(**data)


def _faust_child(spec: dict[str, Any]) -> None:
    """The subprocess side of ``bare_faust_rate``: count messages, write the result, SIGTERM itself."""
    started = time.perf_counter()
    import faust

    from kpi_state.settings import Settings
    from streams.faust_app import events_topic, make_app

    partitions = asyncio.run(_partitions(spec["bootstrap"], spec["topic"]))
    settings = Settings(
        kafka_url=f"kafka://{spec['bootstrap']}", topic=spec["topic"], topic_partitions=partitions
    )
    app = make_app(settings, app_id=spec["app_id"], web_port=spec["web_port"], **spec["overrides"])
    topic = events_topic(app, settings)
    target: int = spec["n"]
    result_path = Path(spec["result"])
    count = first_len = 0
    first_at = 0.0

    @app.agent(topic, concurrency=1)
    async def counter(stream: Any) -> None:
        nonlocal count, first_len, first_at
        async for batch in stream.take(spec["take"], within=spec["within"]):
            now = time.perf_counter()
            if not count:
                first_at, first_len = now, len(batch)
            before, count = count, count + len(batch)
            if before < target <= count:
                result = Rate(
                    messages=count - first_len,
                    events=count - first_len,
                    seconds=now - first_at,
                    startup_seconds=first_at - started,
                )
                await asyncio.to_thread(result_path.write_text, json.dumps(asdict(result)))
                os.kill(os.getpid(), signal.SIGTERM)

    faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False).execute_from_commandline()


async def _partitions(bootstrap: str, topic: str) -> int:
    async with KafkaInspector(bootstrap) as inspector:
        return await inspector.partition_count(topic)


async def _run_all(messages: int, events_per_message: int, partitions: int) -> None:
    from streams.broker import EmbeddedBroker
    from streams.topics import ensure_topics

    with EmbeddedBroker() as broker:
        topic = "bench-events"
        await ensure_topics(broker.bootstrap, {topic: partitions})
        filled = await fill_topic(broker.bootstrap, topic, messages, events_per_message)
        print(f"fill:    {filled.msgs_per_s:10.0f} msgs/s {filled.events_per_s:10.0f} events/s")
        plain = await bare_aiokafka_rate(broker.bootstrap, topic, messages)
        print(f"aiokafka:{plain.msgs_per_s:10.0f} msgs/s {plain.events_per_s:10.0f} events/s")
        bare = await asyncio.to_thread(bare_faust_rate, broker.bootstrap, topic, messages)
        print(f"faust:   {bare.msgs_per_s:10.0f} msgs/s (startup {bare.startup_seconds:.1f} s)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--events-per-message", type=int, default=1)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--faust-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.faust_child:
        _faust_child(json.loads(args.faust_child))
        return
    asyncio.run(_run_all(args.messages, args.events_per_message, args.partitions))


if __name__ == "__main__":
    main()
