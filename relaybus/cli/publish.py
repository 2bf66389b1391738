"""``relaybus publish``: write events through the outbox, like a business service would."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import typer
from rich.progress import Progress

from relaybus.db import create_engine, session_factory
from relaybus.outbox.writer import Outbox, OutboxError
from relaybus.settings import Settings
from relaybus.terminal import make_console

CHUNK = 100  # events per transaction when publishing many


async def publish_events(
    settings: Settings,
    event_type: str,
    aggregate_type: str,
    key: str,
    data: Any,
    count: int,
    rate: float,
    progress: Progress | None = None,
) -> list[str]:
    """Enqueue ``count`` events (``{i}`` in ``key`` is the event's index); return their ids.

    With ``rate`` > 0, events are paced at that many per second.
    """
    outbox = Outbox.from_settings(settings)
    outbox.encode_payload(data)  # refuse bad data before touching the database
    engine = create_engine(settings.database_url)
    sessions = session_factory(engine)
    ids: list[str] = []
    task = progress.add_task("publishing", total=count) if progress else None
    started = time.monotonic()
    try:
        i = 0
        while i < count:
            chunk = 1 if rate > 0 else min(CHUNK, count - i)
            async with sessions() as session, session.begin():
                for j in range(i, i + chunk):
                    message_id = await outbox.enqueue(
                        session,
                        aggregate_type=aggregate_type,
                        aggregate_id=key.replace("{i}", str(j)),
                        type=event_type,
                        payload=data,
                    )
                    ids.append(str(message_id))
            i += chunk
            if progress is not None and task is not None:
                progress.update(task, completed=i)
            if rate > 0:
                ahead = started + i / rate - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
    finally:
        await engine.dispose()
    return ids


def publish(
    event_type: str = typer.Argument(..., metavar="TYPE", help="Event type, e.g. order.created"),
    aggregate_type: str = typer.Option(..., "--aggregate-type", help="e.g. order"),
    key: str = typer.Option(..., "--key", help="Aggregate id; '{i}' becomes the event index."),
    data: str = typer.Option("{}", "--data", help="JSON payload."),
    count: int = typer.Option(1, "--count", min=1, help="How many events."),
    rate: float = typer.Option(0.0, "--rate", min=0.0, help="Events per second (0 = max)."),
    as_json: bool = typer.Option(False, "--json", help="Print the ids as JSON."),
) -> None:
    """Write events through the outbox (the relay publishes them).

    Example: relaybus publish order.created --aggregate-type order --key 'o-{i}' --count 100
    """
    console = make_console(stderr=True)
    try:
        payload = json.loads(data)
    except json.JSONDecodeError as err:
        console.print(f"relaybus publish: --data is not valid JSON: {err}", markup=False)
        raise typer.Exit(2) from None
    settings = Settings()
    try:
        if as_json or count == 1:
            ids = asyncio.run(
                publish_events(settings, event_type, aggregate_type, key, payload, count, rate)
            )
        else:
            with Progress(console=console) as progress:
                ids = asyncio.run(
                    publish_events(
                        settings, event_type, aggregate_type, key, payload, count, rate, progress
                    )
                )
    except OutboxError as err:
        console.print(f"relaybus publish: {err}", markup=False)
        raise typer.Exit(2) from None
    except OSError as err:
        console.print(f"relaybus publish: database unreachable: {err}", markup=False)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps({"ids": ids}))
    else:
        typer.echo(f"enqueued {len(ids)} event(s); first id {ids[0]}")
