"""What every `kpi` command shares: its option types, settings from flags, the runtime, errors."""

from __future__ import annotations

import asyncio
import logging
import sys
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import structlog
import typer
from pydantic import ValidationError
from rich.console import Console

from kpi_app.bootstrap import opened_runtime
from kpi_state import instants
from kpi_state.settings import Settings

console = Console(stderr=True)

RedisUrl = Annotated[str | None, typer.Option("--redis-url", help="Redis URL [env KPI_REDIS_URL]")]
Namespace = Annotated[str | None, typer.Option("--namespace", help="key prefix [env KPI_NAMESPACE]")]
KafkaUrl = Annotated[str | None, typer.Option("--kafka-url", help="kafka://host:port [env KPI_KAFKA_URL]")]
Topic = Annotated[str | None, typer.Option("--topic", help="event topic [env KPI_TOPIC]")]
Group = Annotated[str | None, typer.Option("--group", help="consumer group [env KPI_CONSUMER_GROUP]")]


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


class Format(StrEnum):
    table = "table"
    json = "json"


def parse_instant(value: str | None, option: str = "--as-of") -> datetime | None:
    """An option's RFC 3339 instant (None when not given); a bad one is a usage error naming it."""
    if value is None:
        return None
    try:
        return instants.parse_instant(value, option)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


def require_files(files: list[str]) -> None:
    for name in files:
        if name != "-" and not Path(name).is_file():
            raise typer.BadParameter(f"no such file: {name}")


def run_with_runtime(settings: Settings, body: Any) -> Any:
    async def main() -> Any:
        async with opened_runtime(settings) as runtime:
            return await body(runtime)

    try:
        return asyncio.run(main())
    except (ConnectionError, OSError) as exc:
        console.print(f"[red]cannot reach Redis at {settings.redis_url}:[/red] {exc}")
        raise typer.Exit(1) from exc


def start_consumer(
    command: str,
    *,
    kafka_url: str | None,
    redis_url: str | None,
    namespace: str | None,
    topic: str | None,
    group: str | None,
    web_port: int,
    web_host: str,
    supervise: bool,
    hooks: bool = False,
) -> Settings:
    """The shared start of ``kpi worker`` and ``kpi hooks-worker``: their settings, after checking
    a broker is configured. With ``supervise`` this never returns: the command runs again as a
    supervised child (``run_supervised``) with the same options."""
    from kpi_app.bootstrap import topic_spec

    settings = load_settings(
        kafka_url=kafka_url, redis_url=redis_url, namespace=namespace, topic=topic, consumer_group=group
    )
    if not settings.kafka_url:
        raise typer.BadParameter("--kafka-url (or KPI_KAFKA_URL) is required")
    if supervise:
        options = {"--kafka-url": kafka_url, "--redis-url": redis_url, "--namespace": namespace}
        options |= {"--topic": topic, "--group": group, "--web-port": str(web_port), "--web-host": web_host}
        run_supervised(command, settings, options, topic_spec(settings, hooks=hooks))
    return settings


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
