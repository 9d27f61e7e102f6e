"""Streaming throughput and freshness (DESIGN section 6), measured in one run on one embedded broker.

Every figure comes from the same broker, Redis and machine within a few minutes, so the targets
are ratios against baselines of the same run:

1. 1 event per message: a topic of ``messages`` realistic simulator events; a bare aiokafka
   consumer and a bare faust agent (``bench.kafka_baselines``, the worker's faust settings) read
   it, then one ``kpi worker`` (fresh namespace and consumer group) applies it. The agent runs
   before and after the worker; the worker is compared with their mean. Target: >= 0.8x.
2. 100 events per message: ``batch_events`` of the same kind of events; the bare agent's
   messages/s on it (for reference) and one worker's events/s, compared with the bare agent's
   message rate on the 1-event topic. Target: >= 3x.
3. Two workers against one, 100 events per message: each case on a fresh topic, produced only
   once every worker is assigned its partitions (``/healthz`` 200, the assignments covering every
   partition), so neither start-up nor rebalance is measured. Target: >= 1.7x.
4. Freshness: one worker, ``rate`` events/s of realistic events (re-stamped to the time they are
   sent) for ``seconds`` seconds, one event per message: a CRM webhook call for one record
   change carries one event, and the HTTP ingest publishes a request's events as one message
   (also the harder case for faust, whose cost is per message). Every ``probe_every`` seconds a
   probe ``lead.created`` with a source of its own is timed from its send until it is visible in
   Redis (the ``all`` hash field ``ld|s|<source>``: what ``/metrics`` and the API read); the
   worker's ``kpi_event_to_state_seconds`` histogram is reported too (coarse buckets: its
   quantiles are interpolated). Target: p99 < 1 s.

Throughput is events applied per second from the first applied event to the last: the worker's
Redis watermarks (``<ns>:offsets``, raised atomically with each apply; sum of offset + 1 = messages
applied) are polled every ``POLL_SECONDS``, which leaves group join and start-up out. The worker's
``/metrics`` is read once at the end (a scrape reads every KPI bucket, so it is not polled while
measuring) to check that processed + duplicate + rejected events add up to what was sent.

Modules: bench/stream_data.py (the input), bench/worker_processes.py (``kpi worker`` trees),
bench/worker_metrics.py (their ``/metrics``), bench/cpu_meter.py, bench/stats.py (quantiles),
bench/streaming_runner.py (the measurements), bench/cost_model.py, bench/streaming_phases.py
(the four phases and their verdicts); this module runs them.

``python -m bench.bench_streaming [--redis-url URL] [--messages 50000] ...`` prints the JSON
(about 3.5 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench.cpu_meter import CpuMeter, cpu_busy_share, machine, redis_server_pid
from bench.stream_data import as_messages, realistic_events
from bench.streaming_phases import Phases
from bench.streaming_runner import StreamingBench
from kpi_app.bootstrap import redis_client
from kpi_state.settings import Settings
from streams.broker import EmbeddedBroker


async def _run(
    redis_url: str,
    *,
    messages: int,
    batch_events: int,
    per_message: int,
    rate: float,
    seconds: float,
    probe_every: float,
    faust_repeats: int,
) -> dict[str, Any]:
    report: dict[str, Any] = {}
    started = time.perf_counter()
    events = realistic_events(max(messages, batch_events))
    batch_events -= batch_events % per_message
    single = as_messages(events[-messages:], 1)
    batched = as_messages(events[-batch_events:], per_message)
    pool = events[-min(len(events), math.ceil(rate * seconds * 1.1)) :]  # re-stamped when sent
    report["data"] = {
        "generator": "kpi_app.simulation.simulate_history, 120 days ending a minute ago: the last events",
        "events_generated": len(events),
        "generate_seconds": round(time.perf_counter() - started, 1),
        "one_event_messages": len(single),
        "batch_messages": len(batched),
        "events_per_batch_message": per_message,
        "mean_event_bytes": round(sum(len(v) for _, v in single) / len(single)),
    }
    with tempfile.TemporaryDirectory(prefix="kpi-bench-streaming-") as tmp, EmbeddedBroker() as broker:
        async with redis_client(Settings(redis_url=redis_url)) as client:
            redis_pid = await redis_server_pid(client)
        meter = CpuMeter(broker.pid, redis_pid)
        bench = StreamingBench(broker, redis_url, Path(tmp), meter)
        phases = Phases(bench, report)
        try:
            await phases.guarded("one_event_per_message", lambda: phases.one_event(single, faust_repeats))
            await phases.guarded("batched", lambda: phases.batched(batched, per_message))
            await phases.guarded("two_workers", lambda: phases.two_workers(batched, per_message))
            await phases.guarded("freshness", lambda: phases.freshness(pool, rate, seconds, probe_every))
        finally:
            await bench.close()
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["verdicts"] = phases.verdicts
    return report


def run(
    redis_url: str = "redis://127.0.0.1:6379/0",
    *,
    messages: int = 50_000,
    batch_events: int = 200_000,
    per_message: int = 100,
    rate: float = 1000.0,
    seconds: float = 30.0,
    probe_every: float = 0.05,
    faust_repeats: int = 2,
) -> dict[str, Any]:
    """Every streaming target of DESIGN section 6 in one run (about 3.5 minutes on 2 cores).

    The broker is started here, from the calling thread (it dies with that thread).
    """
    load_before = os.getloadavg()
    busy_before = cpu_busy_share()
    # The broker and topic helpers log with structlog's default logger, to stdout: the report
    # of `python -m bench` owns stdout.
    with contextlib.redirect_stdout(sys.stderr):
        report = asyncio.run(
            _run(
                redis_url,
                messages=messages,
                batch_events=batch_events,
                per_message=per_message,
                rate=rate,
                seconds=seconds,
                probe_every=probe_every,
                faust_repeats=max(1, faust_repeats),
            )
        )
    info = machine(load_before, busy_before)
    verdicts: list[str] = report.pop("verdicts")
    busy = "" if busy_before is None else f", CPU {busy_before:.0%} busy just before"
    verdicts.insert(
        0,
        f"streaming bench on {info['cores']} cores: load average before {load_before[0]:.2f}, "
        f"after {info['load_average_after'][0]:.2f}{busy}",
    )
    return {"machine": info, **report, "verdicts": verdicts}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_streaming", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--redis-url", default=os.environ.get("KPI_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--messages", type=int, default=50_000, help="1-event messages")
    parser.add_argument("--batch-events", type=int, default=200_000, help="events in batch messages")
    parser.add_argument("--per-message", type=int, default=100, help="events per batch message")
    parser.add_argument("--rate", type=float, default=1000.0, help="freshness: events/s")
    parser.add_argument("--seconds", type=float, default=30.0, help="freshness: duration")
    parser.add_argument("--probe-every", type=float, default=0.05, help="freshness: seconds between probes")
    parser.add_argument("--faust-repeats", type=int, default=2, help="bare faust runs on the 1-event topic")
    args = parser.parse_args(argv)
    report = run(
        args.redis_url,
        messages=args.messages,
        batch_events=args.batch_events,
        per_message=args.per_message,
        rate=args.rate,
        seconds=args.seconds,
        probe_every=args.probe_every,
        faust_repeats=args.faust_repeats,
    )
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    for line in report["verdicts"]:
        print(line, file=sys.stderr)


if __name__ == "__main__":
    main()
