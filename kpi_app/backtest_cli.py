"""`kpi alerts backtest FILE.jsonl`: which alerts the rules would have fired over a history
(DESIGN section 9; kpi_app/backtest)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from kpi_app.backtest.prometheus import BacktestError
from kpi_app.backtest.rules import parse_duration
from kpi_app.backtest.run import BacktestReport, BacktestSpec, run_backtest
from kpi_app.cli_common import Format, RedisUrl, load_settings, parse_instant

alerts_app: typer.Typer = typer.Typer(no_args_is_help=True, help="Alert rules: backtest them on a history.")
_err = Console(stderr=True)
DEFAULT_RULES = Path("prometheus/rules")


def _table(report: BacktestReport) -> Table:
    table = Table(title=f"Alerts fired {report.start:%Y-%m-%d %H:%M} .. {report.end:%Y-%m-%d %H:%M} UTC")
    table.add_column("alert", no_wrap=True)
    table.add_column("labels", min_width=24)
    table.add_column("firing from", no_wrap=True)
    table.add_column("until", no_wrap=True)
    for alert in report.alerts:
        labels = ", ".join(
            f"{k}={v}" for k, v in alert.labels.items() if k not in ("alertname", "area", "severity")
        )
        for start, end in alert.firing:
            table.add_row(
                alert.name,
                labels,
                f"{start:%m-%d %H:%M}",
                f"{end:%m-%d %H:%M}" if end else "(still firing)",
            )
    if not report.alerts:
        table.caption = "no alert fired"
    return table


@alerts_app.command("backtest")
def backtest(
    history: Annotated[
        Path,
        typer.Argument(help="JSONL history (e.g. from `kpi simulate --output`)", exists=True, dir_okay=False),
    ],
    start: Annotated[str, typer.Option("--from", help="first evaluation (RFC 3339)")],
    end: Annotated[str, typer.Option("--to", help="last evaluation (RFC 3339)")],
    step: Annotated[str, typer.Option(help="evaluation interval, dividing a day (e.g. 15m, 1h)")] = "1h",
    rules: Annotated[
        Path, typer.Option(help="a rule file, or a directory of *.yml rule files")
    ] = DEFAULT_RULES,
    warmup: Annotated[
        str | None,
        typer.Option(
            help="history sampled before --from for the rules' offsets and ranges (e.g. 22d);"
            " default: as far as the rules reach back"
        ),
    ] = None,
    output_format: Annotated[Format, typer.Option("--format", help="table or json")] = Format.table,
    progress: Annotated[bool, typer.Option(help="show progress bars (stderr)")] = True,
    redis_url: RedisUrl = None,
) -> None:
    """Replay FILE into a scratch Redis namespace step by step, feed the sampled sales_* series and
    the rules to a real Prometheus, and report every alert's firing intervals."""
    files = sorted(rules.glob("*.yml")) if rules.is_dir() else [rules]
    if not files or not all(f.is_file() for f in files):
        raise typer.BadParameter(f"no rule files at {rules}", param_hint="--rules")
    first, last = parse_instant(start, "--from"), parse_instant(end, "--to")
    assert first is not None and last is not None
    try:
        reach = None if warmup is None else parse_duration(warmup)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--warmup") from exc
    try:
        spec = BacktestSpec(history, first, last, parse_duration(step), files, warmup=reach)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--step") from exc
    settings = load_settings(redis_url=redis_url)
    bars = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), console=_err, disable=not progress or not sys.stderr.isatty(),
    )  # fmt: skip

    def track(description: str, total: int) -> Callable[[], None]:
        task = bars.add_task(description, total=total)
        return lambda: bars.advance(task)

    try:
        with bars:
            report = run_backtest(spec, settings, track)
    except (BacktestError, ValueError, OSError) as exc:
        _err.print(f"[red]backtest failed:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        _err.print("backtest interrupted: scratch namespace, Prometheus and temp files removed")
        raise typer.Exit(130) from None
    if output_format == Format.json:
        typer.echo(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        Console().print(_table(report))
