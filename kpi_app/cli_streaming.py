"""`kpi simulate`, `serve`, `send`, `worker`, `broker` and `demo`: the commands of the streaming side,
registered on the `kpi` app by kpi_app.cli."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from kpi_app.bootstrap import build_runtime, opened_runtime
from kpi_app.cli_common import (
    Group,
    KafkaUrl,
    Namespace,
    RedisUrl,
    Topic,
    console,
    load_settings,
    parse_instant,
    require_files,
    start_consumer,
)
from kpi_state.settings import Settings


def simulate(
    history_days: Annotated[float, typer.Option(help="days of backfilled history")] = 0.0,
    seed: Annotated[int, typer.Option(help="random seed")] = 1,
    output: Annotated[Path | None, typer.Option(help="write JSONL here")] = None,
    reps: Annotated[int, typer.Option(help="sales reps")] = 8,
    leads_per_day: Annotated[float, typer.Option(help="lead volume")] = 120.0,
    conversion_drop: Annotated[bool, typer.Option(help="scenario: conversion drops (alert demo)")] = False,
    drop: Annotated[
        list[str] | None,
        typer.Option(
            help="a rate drop, repeatable: RATE:SCOPE:SIZE:START, RATE one of qualification, stage, win,"
            " conversion; SCOPE total, source=NAME or segment=NAME; SIZE 0.7: the rate falls to 30%;"
            " e.g. qualification:source=web:0.7:2026-01-20T00:00:00Z"
        ),
    ] = None,
    end: Annotated[
        str | None,
        typer.Option(help="history: end of the history (RFC 3339; default now), for reproducible files"),
    ] = None,
    corrections: Annotated[
        bool,
        typer.Option(help="the CRM's later edits: reopens, reassignments, amount fixes, deletions, merges"),
    ] = True,
    kafka_url: KafkaUrl = None,
    rate: Annotated[float, typer.Option(help="live: events per second, once the funnel is full")] = 20.0,
    duration: Annotated[
        float | None, typer.Option(help="live: seconds to publish (default: until Ctrl-C)")
    ] = None,
    time_scale: Annotated[
        float, typer.Option(help="live: simulated days per real day (1440: a CRM day per minute)")
    ] = 1440.0,
    topic: Topic = None,
) -> None:
    """Generate a realistic CRM history as JSONL (--output), or publish one live (--kafka-url).

    Live: --history-days simulated days are backfilled first, then events are published in
    real time at about --rate events/s; --conversion-drop starts with the live phase.
    """
    from kpi_app.simulation import SimConfig, simulate_history
    from kpi_app.simulation.drops import parse_drop

    try:
        drops = tuple(parse_drop(text) for text in drop or ())
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--drop") from exc
    if output is None:
        settings = load_settings(kafka_url=kafka_url, topic=topic)
        if not settings.kafka_url:
            raise typer.BadParameter("--output FILE for a history, or --kafka-url URL to publish live")
        live = SimConfig(
            seed=seed,
            reps=reps,
            stages=settings.stage_names,
            conversion_drop=conversion_drop,
            drops=drops,
            time_scale=time_scale,
            corrections=corrections,
        )
        _simulate_live(settings, live, rate=rate, duration=duration, history_days=history_days)
        return
    settings = load_settings()
    config = SimConfig(
        seed=seed,
        reps=reps,
        stages=settings.stage_names,
        leads_per_day=leads_per_day,
        conversion_drop=conversion_drop,
        drops=drops,
        corrections=corrections,
    )
    until = (parse_instant(end, "--end") or datetime.now(UTC)).replace(microsecond=0)
    start = until - timedelta(days=history_days)
    n = 0
    with open(output, "wb") as out:
        for event in simulate_history(config, start=start, end=until):
            out.write(orjson.dumps(event) + b"\n")
            n += 1
    console.print(f"wrote {n:,} events ({history_days:g} days) to {output}")


def serve(
    port: Annotated[int, typer.Option(help="HTTP port")] = 9300,
    host: Annotated[str, typer.Option(help="bind address (0.0.0.0 in containers)")] = "127.0.0.1",
    redis_url: RedisUrl = None,
    namespace: Namespace = None,
    kafka_url: KafkaUrl = None,
) -> None:
    """Serve /metrics, the JSON API and the wall page; with --kafka-url also POST /events."""
    from kpi_app.serve import serve as run_server

    settings = load_settings(redis_url=redis_url, namespace=namespace, kafka_url=kafka_url)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_server(settings, host, port))


def _simulate_live(
    settings: Settings, config: Any, *, rate: float, duration: float | None, history_days: float
) -> None:
    from kpi_app.live import publish_live

    async def body() -> Any:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with opened_runtime(settings) as runtime:
            return await publish_live(
                runtime, config, rate=rate, duration=duration, history_days=history_days, stop=stop
            )

    try:
        summary = asyncio.run(body())
    except (TimeoutError, ValueError) as exc:
        console.print(f"[red]cannot publish:[/red] {exc}")
        raise typer.Exit(1) from exc
    console.print(
        f"published {summary.history_events:,} history + {summary.live_events:,} live events "
        f"in {summary.messages:,} messages ({summary.seconds:.1f} s)"
    )


def send(
    files: Annotated[list[str], typer.Argument(help="JSONL files of events; - for stdin")],
    kafka_url: KafkaUrl = None,
    batch: Annotated[
        int | None,
        typer.Option(help="events per message (1: one JSON object per message) [env KPI_MESSAGE_BATCH]"),
    ] = None,
    raw: Annotated[
        bool, typer.Option(help="send every line as it is, one per message (no validation)")
    ] = False,
    topic: Topic = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    summary_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Publish JSONL events to the topic; invalid lines are counted and skipped unless --raw."""
    from kpi_app.replay import make_progress
    from kpi_app.sender import send_files

    require_files(files)
    settings = load_settings(kafka_url=kafka_url, topic=topic, message_batch=batch)
    if not settings.kafka_url:
        raise typer.BadParameter("--kafka-url (or KPI_KAFKA_URL) is required")
    bar = make_progress(progress and sys.stderr.isatty())

    async def body() -> Any:
        async with opened_runtime(settings) as runtime:
            return await send_files(runtime, files, batch=settings.message_batch, raw=raw, progress=bar)

    try:
        if bar is None:
            summary = asyncio.run(body())
        else:
            with bar:
                summary = asyncio.run(body())
    except TimeoutError as exc:
        console.print(f"[red]cannot reach the broker at {settings.kafka_url}:[/red] {exc}")
        raise typer.Exit(1) from exc
    for reason, n in sorted(summary.rejected.items()):
        console.print(f"  skipped {reason}: {n:,}")
    if summary_json:
        typer.echo(orjson.dumps(summary.as_dict()).decode())
        return
    typer.echo(
        f"lines {summary.lines:,}  sent {summary.events:,} events in {summary.messages:,} messages  "
        f"skipped {sum(summary.rejected.values()):,}"
    )


def worker(
    kafka_url: KafkaUrl = None,
    redis_url: RedisUrl = None,
    namespace: Namespace = None,
    topic: Topic = None,
    group: Group = None,
    web_port: Annotated[int, typer.Option(help="port of /healthz and /metrics (one per worker)")] = 6066,
    web_host: Annotated[str, typer.Option(help="bind address of the web port")] = "127.0.0.1",
    supervise: Annotated[
        bool, typer.Option(help="run faust in a child process that is started again when it stops")
    ] = True,
) -> None:
    """One worker of the consumer group: applies the event topic to the KPI state in Redis."""
    settings = start_consumer(
        "worker", kafka_url=kafka_url, redis_url=redis_url, namespace=namespace, topic=topic, group=group,
        web_port=web_port, web_host=web_host, supervise=supervise,
    )  # fmt: skip
    build_runtime(settings).kpi_worker(web_port=web_port, web_host=web_host).run()


def broker(
    port: Annotated[int, typer.Option(help="Kafka port (0: a free one)")] = 9092,
    host: Annotated[str, typer.Option(help="listen and advertised address")] = "127.0.0.1",
) -> None:
    """Run the embedded Kafka-compatible broker (Tansu, memory storage) until Ctrl-C; prints its URL."""
    from streams.broker import run_broker_foreground

    raise typer.Exit(run_broker_foreground(port or None, host=host))


def demo(
    port: Annotated[int, typer.Option(help="HTTP port of the wall page, API and /metrics")] = 8080,
    rate: Annotated[float, typer.Option(help="live events per second")] = 20.0,
    history_days: Annotated[float, typer.Option(help="days of backfilled history")] = 90.0,
    duration: Annotated[float | None, typer.Option(help="stop after this many seconds")] = None,
    redis_url: RedisUrl = None,
    namespace: Annotated[str, typer.Option(help="key prefix of the demo (cleared at start)")] = "demo",
) -> None:
    """The live demo on the embedded default: broker, worker, simulator, wall page; Ctrl-C stops all."""
    from kpi_app.demo import run_demo
    from streams.broker import free_port, port_is_free

    settings = load_settings(redis_url=redis_url, namespace=namespace)
    http_port = port if port and port_is_free("127.0.0.1", port) else free_port()
    raise typer.Exit(
        run_demo(settings, http_port=http_port, rate=rate, history_days=history_days, duration=duration)
    )
