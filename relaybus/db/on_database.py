"""Running one short operator command's work against the database (a query, a
migration), failures as one line and exit 1."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import typer
from alembic.config import Config
from alembic.util.exc import CommandError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.db import create_engine
from relaybus.db.migrations import LIBRARY, History, alembic_config
from relaybus.settings import Settings
from relaybus.terminal import make_console, plain

T = TypeVar("T")


def run_on_database(command: str, action: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """``action`` with an engine of its own (disposed after); an unreachable or
    unmigrated database is a one-line error naming ``command`` (exit 2), never a
    traceback."""

    async def main() -> T:
        engine = create_engine(Settings().database_url, pool_size=2)
        try:
            return await action(engine)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except (OSError, DBAPIError) as err:
        make_console(stderr=True).print(
            plain(f"relaybus {command}: database unreachable or not migrated: {err!r:.300}")
        )
        raise typer.Exit(2) from None


def migrate(
    action: Callable[[Config, str], None], revision: str, history: History = LIBRARY
) -> None:
    """Run an Alembic command on ``history``; database or revision errors become one
    line, exit 1."""
    try:
        action(alembic_config(Settings().database_url, history), revision)
    except (OSError, DBAPIError, CommandError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
        typer.echo(f"relaybus: {history.name} schema: {type(err).__name__}: {first}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{history.name} schema at {revision}")
