"""The `kpi` command. Thin: parse flags, build the runtime, hand over."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import orjson
import structlog
import typer
from pydantic import ValidationError
from rich.console import Console

from kpi_app.bootstrap import Runtime, build_runtime
from kpi_state.events import EARLIEST_INSTANT, LATEST_INSTANT
from kpi_state.settings import Settings
from kpi_state.windows import WINDOW_NAMES

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Real-time sales KPIs from CRM events (see docs and DESIGN).",
)
console = Console(stderr=True)

RedisUrl = Annotated[str | None, typer.Option("--redis-url", help="Redis URL [env KPI_REDIS_URL]")]
Namespace = Annotated[str | None, typer.Option("--namespace", help="key prefix [env KPI_NAMESPACE]")]
KafkaUrl = Annotated[str | None, typer.Option("--kafka-url", help="kafka://host:port [env KPI_KAFKA_URL]")]
Topic = Annotated[str | None, typer.Option("--topic", help="event topic [env KPI_TOPIC]")]
Group = Annotated[str | None, typer.Option("--group", help="consumer group [env KPI_CONSUMER_GROUP]")]


class Format(StrEnum):
    table = "table"
    json = "json"


class By(StrEnum):
    rep = "rep"
    source = "source"
    segment = "segment"


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, stream=sys.stderr, format="%(message)s")
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # exc_info=True (log.exception) becomes an "exception" string with the whole
            # traceback; plain text, not dict_tracebacks, whose frame locals could hold secrets.
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(level),
    )


def load_settings(**overrides: Any) -> Settings:
    """Environment first, flags win. A bad setting is a clear error, not a traceback."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        console.print(f"[red]invalid configuration:[/red] {exc}")
        raise typer.Exit(2) from exc


def parse_instant(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        ts = datetime.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter(f"not an RFC 3339 timestamp: {value!r}") from exc
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise typer.BadParameter("--as-of needs an offset (e.g. 2026-03-31T23:59:59Z)")
    if not EARLIEST_INSTANT <= ts < LATEST_INSTANT:  # aware comparisons never overflow
        raise typer.BadParameter("--as-of must be from 1970-01-01T00:00:00Z up to 2200-01-01T00:00:00Z")
    return ts


def _require_files(files: list[str]) -> None:
    for name in files:
        if name != "-" and not Path(name).is_file():
            raise typer.BadParameter(f"no such file: {name}")


def run_with_runtime(settings: Settings, body: Any) -> Any:
    async def main() -> Any:
        runtime = build_runtime(settings)
        try:
            return await body(runtime)
        finally:
            await runtime.aclose()

    try:
        return asyncio.run(main())
    except (ConnectionError, OSError) as exc:
        console.print(f"[red]cannot reach Redis at {settings.redis_url}:[/red] {exc}")
        raise typer.Exit(1) from exc


@app.command()
def replay(
    files: Annotated[list[str], typer.Argument(help="JSONL files of events; - for stdin")],
    redis_url: RedisUrl = None,
    namespace: Namespace = None,
    rejects: Annotated[
        Path | None, typer.Option(help="where rejected lines go (default: beside input)")
    ] = None,
    reset: Annotated[bool, typer.Option(help="delete the namespace first")] = False,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    summary_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Validate, de-duplicate and apply events from JSONL files, in batches."""
    from kpi_app.replay import default_rejects_path
    from kpi_app.replay import replay as do_replay

    _require_files(files)
    settings = load_settings(redis_url=redis_url, namespace=namespace)
    rejects_path = rejects or default_rejects_path(files)

    async def body(runtime: Runtime) -> Any:
        if reset:
            await runtime.store.clear()
        return await do_replay(runtime, files, rejects_path, progress and sys.stderr.isatty())

    summary = run_with_runtime(settings, body)
    if summary_json:
        typer.echo(orjson.dumps(summary.as_dict()).decode())
        return
    out = Console()
    out.print(
        f"lines {summary.lines:,}  applied {summary.applied:,}  duplicates {summary.duplicates:,}  "
        f"rejected {sum(summary.rejected.values()):,}"
    )
    for reason, n in sorted(summary.rejected.items()):
        out.print(f"  rejected {reason}: {n:,}")
    if summary.rejected:
        out.print(f"rejected lines and reasons: {summary.rejects_path}")


@app.command()
def show(
    window: Annotated[str, typer.Option(help=f"one of {', '.join(WINDOW_NAMES)}")] = "30d",
    by: Annotated[By | None, typer.Option(help="breakdown")] = None,
    as_of: Annotated[str | None, typer.Option("--as-of", help="evaluation time (RFC 3339)")] = None,
    fmt: Annotated[Format, typer.Option("--format", help="table or json")] = Format.table,
    redis_url: RedisUrl = None,
    namespace: Namespace = None,
) -> None:
    """Show the KPIs; --format json prints the full DESIGN section-5 document."""
    from kpi_app.show import render

    if window not in WINDOW_NAMES:
        raise typer.BadParameter(f"window must be one of {', '.join(WINDOW_NAMES)}")
    settings = load_settings(redis_url=redis_url, namespace=namespace)
    instant = parse_instant(as_of)

    async def body(runtime: Runtime) -> dict[str, Any]:
        return await runtime.reader.document(instant)

    doc = run_with_runtime(settings, body)
    if fmt is Format.json:
        typer.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        return
    Console().print(render(doc, window, by.value if by else None))


@app.command()
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
    until = (parse_instant(end) or datetime.now(UTC)).replace(microsecond=0)
    start = until - timedelta(days=history_days)
    n = 0
    with open(output, "wb") as out:
        for event in simulate_history(config, start=start, end=until):
            out.write(orjson.dumps(event) + b"\n")
            n += 1
    console.print(f"wrote {n:,} events ({history_days:g} days) to {output}")


@app.command()
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
        return await publish_live(
            settings, config, rate=rate, duration=duration, history_days=history_days, stop=stop
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


@app.command()
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

    _require_files(files)
    settings = load_settings(kafka_url=kafka_url, topic=topic, message_batch=batch)
    if not settings.kafka_url:
        raise typer.BadParameter("--kafka-url (or KPI_KAFKA_URL) is required")
    bar = make_progress(progress and sys.stderr.isatty())

    async def body() -> Any:
        return await send_files(settings, files, batch=settings.message_batch, raw=raw, progress=bar)

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


def run_supervised(
    command: str, settings: Settings, options: dict[str, str | None], topics: dict[str, int]
) -> NoReturn:
    """Run ``kpi <command> --no-supervise <options>`` as a child that is started again whenever it
    stops (``streams.supervisor``), after creating ``topics`` (name -> partitions)."""
    from streams.broker import bootstrap_servers
    from streams.supervisor import Supervisor

    assert settings.kafka_url is not None
    child = [sys.executable, "-m", "kpi_app", command, "--no-supervise"]
    child += [part for flag, value in options.items() if value is not None for part in (flag, value)]
    raise typer.Exit(Supervisor(child, bootstrap_servers(settings.kafka_url), topics).run())


@app.command()
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
    settings = load_settings(
        kafka_url=kafka_url, redis_url=redis_url, namespace=namespace, topic=topic, consumer_group=group
    )
    if not settings.kafka_url:
        raise typer.BadParameter("--kafka-url (or KPI_KAFKA_URL) is required")
    if supervise:
        options = {"--kafka-url": kafka_url, "--redis-url": redis_url, "--namespace": namespace}
        options |= {"--topic": topic, "--group": group, "--web-port": str(web_port), "--web-host": web_host}
        topics = {settings.topic: settings.topic_partitions, settings.dlq_topic: settings.dlq_partitions}
        run_supervised("worker", settings, options, topics)
    from streams.worker import KpiWorker

    runtime = build_runtime(settings)
    KpiWorker(
        settings,
        redis=runtime.redis,
        parser=runtime.parser,
        make_reader=lambda: build_runtime(settings).reader,  # its own client, in the scrape thread
        web_port=web_port,
        web_host=web_host,
    ).run()


@app.command()
def broker(
    port: Annotated[int, typer.Option(help="Kafka port (0: a free one)")] = 9092,
    host: Annotated[str, typer.Option(help="listen and advertised address")] = "127.0.0.1",
) -> None:
    """Run the embedded Kafka-compatible broker (Tansu, memory storage) until Ctrl-C; prints its URL."""
    from streams.broker import run_broker_foreground

    raise typer.Exit(run_broker_foreground(port or None, host=host))


@app.command()
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


from kpi_app.backtest_cli import alerts_app  # noqa: E402 - it uses this module's helpers
from kpi_app.cli_connectors import hooks_worker, import_csv  # noqa: E402 - likewise
from kpi_app.targets_cli import targets_app  # noqa: E402 - likewise

app.add_typer(targets_app, name="targets")
app.add_typer(alerts_app, name="alerts")

app.command("import")(import_csv)
app.command("hooks-worker")(hooks_worker)


def main() -> None:
    configure_logging()
    app()
