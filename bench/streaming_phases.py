"""The streaming bench's four measurements, in order, and their verdict lines."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from bench.cost_model import cost_model
from bench.kafka_baselines import Rate, bare_aiokafka_rate, bare_faust_rate
from bench.stream_data import Message, create_topic, produce
from bench.streaming_runner import StreamingBench

TARGET_ONE_EVENT = 0.8  # worker events/s over bare agent msgs/s, 1 event per message
TARGET_BATCHED = 3.0  # worker events/s (100 per message) over bare agent msgs/s (1 per message)
TARGET_TWO_WORKERS = 1.7
TARGET_P99_SECONDS = 1.0


def _ok(passed: bool) -> str:
    return "OK" if passed else "MISSED"


def _caveats(*results: dict[str, Any]) -> str:
    """What makes a measurement suspect, for its verdict line."""
    notes: list[str] = []
    for result in results:
        if not result.get("all_accounted", True):
            notes.append(f"counts {result.get('counts')} != {result.get('events')} events")
        logs = result.get("worker_logs") or [result.get("worker_log") or {}]
        if any(log.get("faust_processes", 1) > 1 for log in logs):
            notes.append("a worker's faust process was restarted")
        other = result.get("cpu", {}).get("other")
        if other is not None and other >= 0.25:
            notes.append(f"other processes used {other:.0%} of the CPU")
    return f" [{'; '.join(notes)}]" if notes else ""


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


class Phases:
    """The four measurements, in order, each recorded (or its error) in ``report``."""

    def __init__(self, bench: StreamingBench, report: dict[str, Any]) -> None:
        self.bench = bench
        self.report = report
        self.verdicts: list[str] = []
        self.bare_rate: float | None = None  # bare faust msgs/s on the 1-event topic

    async def guarded(self, name: str, phase: Callable[[], Awaitable[None]]) -> None:
        try:
            await phase()
        except Exception as exc:  # one failed phase must not lose the others' figures
            self.report[name] = {"error": repr(exc)[:2000]}
            self.verdicts.append(f"{name}: ERROR {repr(exc)[:300]}")

    async def one_event(self, single: Sequence[Message], faust_repeats: int) -> None:
        broker = self.bench.broker
        topic = f"bench-stream-{self.bench.run_id}-one"
        await create_topic(broker.bootstrap, topic)
        fill = await produce(broker.bootstrap, topic, single)
        plain = await bare_aiokafka_rate(broker.bootstrap, topic, len(single))
        bare: list[Rate] = [await asyncio.to_thread(bare_faust_rate, broker.bootstrap, topic, len(single))]
        worker = await self.bench.worker_throughput("w1-one", 1, single, 1, prefilled_topic=topic)
        for _ in range(faust_repeats - 1):  # again after the worker: the agent's rate drifts
            bare.append(await asyncio.to_thread(bare_faust_rate, broker.bootstrap, topic, len(single)))
        self.bare_rate = sum(r.msgs_per_s for r in bare) / len(bare)
        ratio = (worker["events_per_s"] or 0) / self.bare_rate
        self.report["one_event_per_message"] = {
            "fill_msgs_per_s": round(len(single) / fill),
            "bare_aiokafka_msgs_per_s": round(plain.msgs_per_s),
            "bare_faust_msgs_per_s": round(self.bare_rate),
            "bare_faust_runs_msgs_per_s": [round(r.msgs_per_s) for r in bare],
            "bare_faust_startup_seconds": [round(r.startup_seconds, 1) for r in bare],
            "worker": worker,
            "ratio_vs_bare_faust": round(ratio, 3),
            "target_ratio": TARGET_ONE_EVENT,
        }
        self.verdicts.append(
            f"worker 1 event/msg: {_rate(worker['events_per_s'])} ev/s = {ratio:.2f}x bare faust "
            f"{self.bare_rate:,.0f} msgs/s (runs {', '.join(f'{r.msgs_per_s:,.0f}' for r in bare)}; "
            f"bare aiokafka {plain.msgs_per_s:,.0f} msgs/s) (target >= {TARGET_ONE_EVENT}x): "
            f"{_ok(ratio >= TARGET_ONE_EVENT)}{_caveats(worker)}"
        )

    async def batched(self, batched: Sequence[Message], per_message: int) -> None:
        broker = self.bench.broker
        topic = f"bench-stream-{self.bench.run_id}-batch"
        await create_topic(broker.bootstrap, topic)
        fill = await produce(broker.bootstrap, topic, batched)
        plain = await bare_aiokafka_rate(broker.bootstrap, topic, len(batched))
        bare = await asyncio.to_thread(bare_faust_rate, broker.bootstrap, topic, len(batched))
        worker = await self.bench.worker_throughput(
            "w1-batch", 1, batched, per_message, prefilled_topic=topic
        )
        ratio = None if self.bare_rate is None else (worker["events_per_s"] or 0) / self.bare_rate
        self.report["batched"] = {
            "fill_msgs_per_s": round(len(batched) / fill),
            "bare_aiokafka_msgs_per_s": round(plain.msgs_per_s),
            "bare_aiokafka_events_per_s": round(plain.events_per_s),
            "bare_faust_msgs_per_s": round(bare.msgs_per_s),
            "worker": worker,
            "ratio_vs_bare_faust_one_event_msgs_per_s": None if ratio is None else round(ratio, 3),
            "target_ratio": TARGET_BATCHED,
        }
        verdict = "n/a (no 1-event baseline)" if ratio is None else _ok(ratio >= TARGET_BATCHED)
        self.verdicts.append(
            f"worker {per_message} events/msg: {_rate(worker['events_per_s'])} ev/s = "
            f"{'n/a' if ratio is None else f'{ratio:.2f}'}x bare faust {_rate(self.bare_rate)} msgs/s on "
            f"1-event msgs (bare faust on {per_message}-event msgs: {bare.msgs_per_s:,.0f} msgs/s) "
            f"(target >= {TARGET_BATCHED}x): {verdict}{_caveats(worker)}"
        )

    async def two_workers(self, batched: Sequence[Message], per_message: int) -> None:
        one = await self.bench.worker_throughput("w1-live", 1, batched, per_message)
        two = await self.bench.worker_throughput("w2-live", 2, batched, per_message)
        ratio = (two["events_per_s"] or 0) / max(one["events_per_s"] or 1, 1)
        cost = cost_model(one, os.cpu_count() or 1)
        self.report["two_workers"] = {
            "one_worker": one,
            "two_workers": two,
            "ratio": round(ratio, 3),
            "target_ratio": TARGET_TWO_WORKERS,
            "cost_model_one_worker": cost,
        }
        self.verdicts.append(
            f"two workers {per_message} events/msg: {_rate(two['events_per_s'])} ev/s = {ratio:.2f}x "
            f"one worker {_rate(one['events_per_s'])} ev/s (both on a fresh topic produced after the "
            f"group settled) (target >= {TARGET_TWO_WORKERS}x): {_ok(ratio >= TARGET_TWO_WORKERS)}"
            f"{_caveats(one, two)}"
        )
        if cost is not None:
            ceiling = cost["two_worker_ceiling_events_per_s"] / max(one["events_per_s"] or 1, 1)
            w, r, rest = cost["worker_us_per_event"], cost["redis_us_per_event"], cost["rest_us_per_event"]
            self.verdicts.append(
                f"cost per event (one worker, {per_message} events/msg): worker {w} us, Redis {r} us, "
                f"broker and the rest {rest} us of CPU; ceilings on {os.cpu_count()} cores: one worker "
                f"{cost['one_worker_ceiling_events_per_s']:,} ev/s, two workers "
                f"{cost['two_worker_ceiling_events_per_s']:,} ev/s = {ceiling:.2f}x one worker"
            )

    async def freshness(
        self, pool: Sequence[dict[str, Any]], rate: float, seconds: float, probe_every: float
    ) -> None:
        fresh = await self.bench.freshness(pool, rate, seconds, probe_every)
        self.report["freshness"] = fresh
        hist, probes = fresh["histogram"], fresh["probes"]
        p99 = probes.get("p99_ms")
        passed = p99 is not None and p99 < TARGET_P99_SECONDS * 1000 and probes["seen"] == probes["sent"]
        share = "n/a" if hist["share_within_1s"] is None else f"{hist['share_within_1s']:.2%}"
        self.verdicts.append(
            f"freshness at {fresh['achieved_events_per_s']:,} events/s (1 event/msg): probes "
            f"p50 {probes.get('p50_ms')} ms, p99 {p99} ms, max {probes.get('max_ms')} ms "
            f"({probes['seen']}/{probes['sent']} seen); worker histogram p50 "
            f"~{hist['p50_ms']} ms, p99 ~{hist['p99_ms']} ms, {share} within 1 s "
            f"(target p99 < {TARGET_P99_SECONDS:g} s): {_ok(passed)}{_caveats(fresh)}"
        )
