"""``relaybus replay --broker rabbitmq``: RabbitMQ keeps no log, so a window is
republished from the outbox archive, with the same ids, to the relay's exchange."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from datetime import datetime
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from relaybus.audit import record
from relaybus.brokers.kafka_replay import CopyFilter
from relaybus.brokers.publisher import PublishError
from relaybus.brokers.rabbitmq import EXCHANGE, RabbitPublisher
from relaybus.db import create_engine, session_factory
from relaybus.outbox.archive_replay import (
    ArchiveWindowError,
    check_retention,
    count_archived,
    replay_archive,
)
from relaybus.outbox.routing import Router
from relaybus.settings import Settings
from relaybus.terminal import make_console, plain


def replay_from_archive(
    exchange: str,
    since: datetime,
    until: datetime,
    filters: CopyFilter,
    dry_run: bool,
    yes: bool,
    now: datetime,
) -> dict[str, Any]:
    """Republish the archived rows of [since, until) routed to RabbitMQ (``--type``
    is a pattern such as ``order.*``; ``--key`` an aggregate id); audited. A window
    older than the archive's retention is refused, saying so."""
    settings = Settings()
    err = make_console(stderr=True)
    if exchange != EXCHANGE:
        raise typer.BadParameter(
            f"the relay publishes to the exchange {EXCHANGE!r}; replay that", param_hint="TOPIC"
        )
    try:
        check_retention(since, settings.relay_archive_retention_days, now)
    except ArchiveWindowError as problem:
        err.print(plain(f"relaybus replay: {problem}"))
        raise typer.Exit(2) from None
    try:
        return asyncio.run(_replay(settings, since, until, filters, dry_run, yes))
    except PublishError as problem:
        err.print(plain(f"relaybus replay: stopped: {problem}"))
        raise typer.Exit(1) from None
    except OSError as problem:
        err.print(plain(f"relaybus replay: unreachable: {problem}"))
        raise typer.Exit(1) from None


async def _replay(
    settings: Settings,
    since: datetime,
    until: datetime,
    filters: CopyFilter,
    dry_run: bool,
    yes: bool,
) -> dict[str, Any]:
    engine = create_engine(settings.database_url, pool_size=1)
    try:
        total = await count_archived(engine, since, until)
        span = {"since": since.isoformat(), "until": until.isoformat()}
        if dry_run:
            return {"archived_in_window": total, **span, "dry_run": True}
        if not yes and not typer.confirm(f"Republish up to {total} archived events to RabbitMQ?"):
            raise typer.Abort()
        detail = {**span, "type": filters.type, "key": filters.key}
        async with session_factory(engine)() as session, session.begin():
            audit_id = (await record(session, "replay.archive", EXCHANGE, detail)).id
        publisher = RabbitPublisher(settings.rabbitmq)
        await publisher.start()
        try:
            with Progress(
                TextColumn("[bold]archive -> rabbitmq"),
                BarColumn(),
                MofNCompleteColumn(),
                console=make_console(stderr=True),
            ) as bar:
                task = bar.add_task("replay", total=total)
                result = await replay_archive(
                    engine, publisher, Router(settings.routes), "rabbitmq", since, until,
                    filters.type, filters.key, lambda n: bar.advance(task, n), audit_id,
                )  # fmt: skip
        finally:
            await publisher.stop()
        async with session_factory(engine)() as session, session.begin():
            await record(session, "replay.archive-finished", EXCHANGE,
                         {"of": audit_id, **asdict(result)})  # fmt: skip
        return {"audit_id": audit_id, **span, **asdict(result)}
    finally:
        await engine.dispose()
