"""`make bench`: every target of DESIGN section 6, measured in one run.

Prints one JSON document (and a short verdict per target). Absolute figures on a
shared 2-core machine drift; the streaming targets are ratios against baselines
measured in the same run.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
from typing import Any

import orjson


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "load_average": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--redis-url", default=os.environ.get("KPI_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--events", type=int, default=200_000, help="events for the replay benchmark")
    parser.add_argument("--only", choices=["replay", "scrape", "streaming", "hooks"], action="append")
    args = parser.parse_args(argv)
    from kpi_app.cli import configure_logging

    configure_logging(logging.WARNING)  # logs to stderr: stdout is the JSON report
    wanted = set(args.only or ["replay", "scrape", "streaming", "hooks"])
    report: dict[str, Any] = {"machine": machine()}
    verdicts: list[str] = []

    if "replay" in wanted:
        from bench import bench_replay

        replay = bench_replay.run(args.redis_url, args.events)
        report["replay"] = replay
        verdicts.append(f"replay {replay['events_per_s']:,} events/s (target 20,000+)")
        per_event = replay["idempotency_bytes_per_event"]
        verdicts.append(f"idempotency keys {per_event} bytes/event (target <= ~150)")
        redis_us = replay["redis_cpu_us_per_applied_event"]
        verdicts.append(
            f"replay CPU per applied event (simulator stream with corrections): Redis {redis_us} us "
            f"(ceiling {1e6 / max(redis_us, 1e-9):,.0f} events/s), replay process "
            f"{replay['replay_process_cpu_us_per_applied_event']} us"
        )
    if "scrape" in wanted:
        from bench import bench_scrape

        scrape = bench_scrape.run(args.redis_url)
        report["scrape"] = scrape
        p50, p99 = scrape["p50_ms"], scrape["p99_ms"]
        verdicts.append(f"scrape 50x10x5 p50 {p50} ms, p99 {p99} ms (target < 100 ms)")
        # A busy system: every minute and hour bucket of the 1h/24h windows holds every value too.
        dense = bench_scrape.run(args.redis_url, dense=True)
        report["scrape_dense"] = dense
        verdicts.append(
            f"scrape 50x10x5, every minute/hour bucket dense: p50 {dense['p50_ms']} ms, "
            f"p99 {dense['p99_ms']} ms (target < 100 ms)"
        )
    if "streaming" in wanted:
        try:
            from bench import bench_streaming
        except ImportError:
            verdicts.append("streaming: not available")
        else:
            streaming = bench_streaming.run(args.redis_url)
            report["streaming"] = streaming
            verdicts.extend(streaming.get("verdicts", []))

    if "hooks" in wanted:
        from bench import bench_hooks

        hooks = bench_hooks.run(args.redis_url)
        report["hooks"] = hooks
        verdicts.append(hooks["verdict"])

    report["machine"]["load_average_after"] = os.getloadavg()
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    for line in verdicts:
        print(line, file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
