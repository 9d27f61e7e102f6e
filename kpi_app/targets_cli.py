"""`kpi targets load FILE` and `kpi targets show`: targets (quotas) in Redis (DESIGN section 4)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console

from kpi_app.bootstrap import Runtime
from kpi_app.cli_common import Namespace, RedisUrl, load_settings, parse_instant, run_with_runtime
from kpi_state.targets import TargetsRefused, parse_targets_text

targets_app = typer.Typer(no_args_is_help=True, help="Targets (quotas): load a file, show the figures.")
_err = Console(stderr=True)


@targets_app.command("load")
def load(
    file: Annotated[
        Path, typer.Argument(help="YAML or JSON list of {kpi, period, scope, value}", exists=True)
    ],
    redis_url: RedisUrl = None,
    namespace: Namespace = None,
) -> None:
    """Replace every target with the file's; a file with any bad entry is refused whole."""
    try:
        targets = parse_targets_text(file.read_text(encoding="utf-8"))
    except TargetsRefused as exc:
        for line, reason in exc.problems:
            _err.print(f"{file}:{line}: {reason}", markup=False, highlight=False)
        _err.print(
            f"refused: {len(exc.problems)} bad entr{'y' if len(exc.problems) == 1 else 'ies'}, nothing loaded"
        )
        raise typer.Exit(1) from exc
    settings = load_settings(redis_url=redis_url, namespace=namespace)

    async def body(runtime: Runtime) -> None:
        await runtime.reader.targets.replace(targets)

    run_with_runtime(settings, body)
    typer.echo(f"loaded {len(targets)} targets")


@targets_app.command("show")
def show(
    as_of: Annotated[str | None, typer.Option("--as-of", help="evaluation time (RFC 3339)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    redis_url: RedisUrl = None,
    namespace: Namespace = None,
) -> None:
    """Every target whose period contains the evaluation time, with actual, attainment, pace..."""
    from kpi_app.show import targets_table

    settings = load_settings(redis_url=redis_url, namespace=namespace)
    instant = parse_instant(as_of)

    async def body(runtime: Runtime) -> dict[str, Any]:
        doc: dict[str, Any] = await runtime.reader.document(instant, ["mtd", "qtd", "ytd"])
        return {"as_of": doc["as_of"], "currency": doc["currency"], "targets": doc["targets"]}

    doc = run_with_runtime(settings, body)
    if json_out:
        typer.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        return
    Console().print(targets_table(doc))
