"""The `kpi` command. Thin: parse flags, build the runtime, hand over.

The commands live by concept: here the state commands (`replay`, `show`); the streaming side in
kpi_app.cli_streaming; `import` and `hooks-worker` in kpi_app.cli_connectors; `targets` in
kpi_app.targets_cli; `alerts backtest` in kpi_app.backtest_cli. Shared options and helpers:
kpi_app.cli_common.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console

from kpi_app import cli_streaming
from kpi_app.backtest_cli import alerts_app
from kpi_app.bootstrap import Runtime
from kpi_app.cli_common import (
    Format,
    Namespace,
    RedisUrl,
    configure_logging,
    load_settings,
    parse_instant,
    require_files,
    run_with_runtime,
)
from kpi_app.cli_connectors import hooks_worker, import_csv
from kpi_app.targets_cli import targets_app
from kpi_state.windows import WINDOW_NAMES

__all__ = ["app", "configure_logging", "main"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Real-time sales KPIs from CRM events (see docs and DESIGN).",
)


class By(StrEnum):
    rep = "rep"
    source = "source"
    segment = "segment"


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

    require_files(files)
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


app.command()(cli_streaming.simulate)
app.command()(cli_streaming.serve)
app.command()(cli_streaming.send)
app.command()(cli_streaming.worker)
app.command()(cli_streaming.broker)
app.command()(cli_streaming.demo)

app.command("import")(import_csv)
app.command("hooks-worker")(hooks_worker)
app.add_typer(targets_app, name="targets")
app.add_typer(alerts_app, name="alerts")


def main() -> None:
    configure_logging()
    app()
