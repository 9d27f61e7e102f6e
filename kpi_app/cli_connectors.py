"""`kpi import` and `kpi hooks-worker`: registered on the `kpi` app by kpi_app.cli (kept apart for size)."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from pydantic import ValidationError
from rich.console import Console

from kpi_app.bootstrap import Runtime, build_runtime, opened_runtime
from kpi_app.cli_common import (
    KafkaUrl,
    Namespace,
    RedisUrl,
    Topic,
    console,
    load_settings,
    run_with_runtime,
    start_consumer,
)


def import_csv(
    file: Annotated[Path, typer.Argument(help="CSV export of opportunities (a header row first)")],
    map_: Annotated[
        str,
        typer.Option(
            "--map",
            help="field=column,... fields: id owner stage status amount currency created_at "
            "closed_at customer lead source segment (id, created_at and stage or status needed)",
        ),
    ],
    date_format: Annotated[
        str | None, typer.Option(help="strptime format of the dates (default ISO 8601), e.g. %m/%d/%Y")
    ] = None,
    won: Annotated[str, typer.Option(help="status (or stage) value of a won deal")] = "won",
    lost: Annotated[str, typer.Option(help="status (or stage) value of a lost deal")] = "lost",
    stage_map: Annotated[
        str, typer.Option(help="export stage=configured stage,... (default: same name, any case)")
    ] = "",
    exported_at: Annotated[
        str | None, typer.Option(help="when the export was taken, RFC 3339 (default: now)")
    ] = None,
    redis_url: RedisUrl = None,
    namespace: Namespace = None,
    kafka_url: KafkaUrl = None,
    topic: Topic = None,
    rejects: Annotated[
        Path | None, typer.Option(help="skipped/rejected rows and reasons (default: beside input)")
    ] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    summary_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Import a CRM's CSV export: each row is the current state of one opportunity.

    Applies to Redis directly (like `kpi replay`), or publishes with --kafka-url. Importing the
    same export again changes nothing; a later export sends what changed (docs/connectors.md).
    """
    from connectors.csv_mapping import ImportOptions, RowMapper, parse_column_map, parse_pairs
    from kpi_app.csv_import import header, import_to_store, import_to_topic
    from kpi_app.replay import make_progress

    if not file.is_file():
        raise typer.BadParameter(f"no such file: {file}")
    settings = load_settings(redis_url=redis_url, namespace=namespace, kafka_url=kafka_url, topic=topic)
    try:
        when = datetime.now(UTC) if exported_at is None else datetime.fromisoformat(exported_at)
        options = ImportOptions(
            columns=parse_column_map(map_),
            stages=settings.stage_names,
            exported_at=when,
            timezone=settings.timezone,
            date_format=date_format,
            won=won,
            lost=lost,
            stage_map=parse_pairs(stage_map, "--stage-map"),
        )
    except (ValidationError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    absent = sorted(set(options.columns.values()) - set(header(file)))
    if absent:
        raise typer.BadParameter(f"columns not in the file's header: {', '.join(absent)}")
    mapper = RowMapper(options)
    rejects_path = rejects or file.with_name(file.name + ".rejects.jsonl")
    bar = make_progress(progress and sys.stderr.isatty())

    async def to_store(runtime: Runtime) -> Any:
        with open(rejects_path, "wb") as out:  # noqa: ASYNC230 - one open; appends are buffered
            return await import_to_store(runtime, mapper, file, out, bar)

    async def to_topic() -> Any:
        with open(rejects_path, "wb") as out:  # noqa: ASYNC230 - one open; appends are buffered
            async with opened_runtime(settings) as runtime:
                return await import_to_topic(runtime, mapper, file, out, bar)

    if bar is not None:
        bar.start()
    try:
        if kafka_url or (settings.kafka_url and not redis_url):
            summary = asyncio.run(to_topic())
        else:
            summary = run_with_runtime(settings, to_store)
    except TimeoutError as exc:
        console.print(f"[red]cannot reach the broker at {settings.kafka_url}:[/red] {exc}")
        raise typer.Exit(1) from exc
    finally:
        if bar is not None:
            bar.stop()
    summary.rejects_path = rejects_path
    if summary_json:
        typer.echo(orjson.dumps(summary.as_dict()).decode())
        return
    out = Console()
    counts = "  ".join(f"{name} {n:,}" for name, n in sorted(summary.outcomes.items()))
    out.print(f"rows {summary.rows:,}  events {summary.events:,}  {counts}")
    for reason, n in sorted(summary.reasons.items()):
        out.print(f"  {reason}: {n:,}")
    for problem in summary.first_problems:
        console.print(f"  {problem}", markup=False, highlight=False)
    if summary.reasons:
        out.print(f"skipped/rejected rows with line numbers and reasons: {rejects_path}")


def hooks_worker(
    kafka_url: KafkaUrl = None,
    redis_url: RedisUrl = None,
    namespace: Namespace = None,
    topic: Topic = None,
    group: Annotated[str | None, typer.Option("--group", help="consumer group prefix")] = None,
    web_port: Annotated[int, typer.Option(help="port of /healthz (one per process)")] = 6067,
    web_host: Annotated[str, typer.Option(help="bind address of the web port")] = "127.0.0.1",
    supervise: Annotated[
        bool, typer.Option(help="run faust in a child process that is started again when it stops")
    ] = True,
) -> None:
    """Translate stored CRM webhooks (POST /hooks/*) into events on the event topic."""
    settings = start_consumer(
        "hooks-worker", kafka_url=kafka_url, redis_url=redis_url, namespace=namespace, topic=topic,
        group=group, web_port=web_port, web_host=web_host, supervise=supervise, hooks=True,
    )  # fmt: skip
    runtime = build_runtime(settings)
    try:
        worker = runtime.hooks_worker(web_port=web_port, web_host=web_host)
    except ValueError as exc:
        console.print(f"[red]invalid connector mapping:[/red] {exc}")
        raise typer.Exit(2) from exc
    worker.run()
