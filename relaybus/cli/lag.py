"""``relaybus lag``: where work waits — Kafka consumer groups, RabbitMQ queues, the outbox."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from typing import Any

import typer
from rich.table import Table

from relaybus.brokers.kafka_admin import consumer_lag
from relaybus.brokers.rabbit_management import queue_depths
from relaybus.db import create_engine
from relaybus.outbox.admin import OutboxAdmin
from relaybus.settings import Settings
from relaybus.terminal import make_console, plain


async def _kafka(settings: Settings, group: str | None) -> list[dict[str, Any]]:
    rows = await consumer_lag(settings.kafka, group)
    return [{**asdict(row), "lag": row.lag} for row in rows]


async def _rabbitmq(settings: Settings) -> list[dict[str, Any]]:
    return [asdict(depth) for depth in await queue_depths(settings.rabbitmq_management)]


async def _outbox(settings: Settings) -> list[dict[str, Any]]:
    engine = create_engine(settings.database_url, pool_size=1)
    try:
        return [asdict(p) for p in await OutboxAdmin(engine).backlog_by_partition()]
    finally:
        await engine.dispose()


async def gather_waiting(
    settings: Settings, group: str | None
) -> tuple[dict[str, Any], dict[str, str]]:
    """Each source's rows, and for a source that could not be read, why (the others
    are still reported: an operator looks at lag most when something is down)."""
    sources: dict[str, Any] = {"kafka": _kafka(settings, group)}
    if group is None:
        sources["rabbitmq"] = _rabbitmq(settings)
        sources["outbox"] = _outbox(settings)
    results = await asyncio.gather(*sources.values(), return_exceptions=True)
    found: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, result in zip(sources, results, strict=True):
        if isinstance(result, LookupError):
            raise result  # the group named does not exist: a usage error
        if isinstance(result, OSError | TimeoutError):  # ConnectionError is an OSError
            errors[name] = f"unreachable ({type(result).__name__}: {result})"
        elif isinstance(result, BaseException):
            raise result
        else:
            found[name] = result
    return found, errors


def lag(
    group: str = typer.Option(
        None, "--group", "-g", help="Only this Kafka consumer group (and not the queues or outbox)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Where work waits, in one view: per Kafka consumer group and partition the
    committed offset, the end offset and the lag; per RabbitMQ queue the messages
    ready and unacknowledged; per outbox partition the pending and failed rows and
    the oldest pending row's age. A source that cannot be reached is reported as
    such and the exit code is 1.

    Example: relaybus lag --group orders-admitted --json
    """
    try:
        found, errors = asyncio.run(gather_waiting(Settings(), group))
    except LookupError as err:
        make_console(stderr=True).print(plain(f"relaybus lag: {err}"))
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps({**found, "errors": errors}, indent=2))
    else:
        _print(found, errors)
    if errors:
        raise typer.Exit(1)


TABLES = {
    "kafka": ("Kafka consumer groups", ("group", "topic", "partition", "committed", "end", "lag")),
    "rabbitmq": ("RabbitMQ queues", ("vhost", "queue", "ready", "unacked", "consumers")),
    "outbox": ("outbox partitions", ("partition", "pending", "failed", "oldest_pending_age_s")),
}


def _print(found: dict[str, Any], errors: dict[str, str]) -> None:
    console = make_console()
    for name, (title, columns) in TABLES.items():
        if name in errors:
            console.print(plain(f"{title}: {errors[name]}"))
            continue
        if name not in found:
            continue
        table = Table(title=title)
        for column in columns:
            text = column in ("group", "topic", "vhost", "queue")
            table.add_column(column.replace("_", " "), justify="left" if text else "right")
        for row in found[name]:
            table.add_row(*(plain(_cell(row[c])) for c in columns))
        console.print(table)


def _cell(value: object) -> str:
    if value is None:  # an end offset no leader answered for
        return "?"
    return f"{value:.1f}" if isinstance(value, float) else str(value)
