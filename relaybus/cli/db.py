"""``relaybus db upgrade|downgrade|current``: Alembic migrations of the relaybus schema."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer
from alembic import command
from alembic.config import Config
from alembic.util.exc import CommandError
from sqlalchemy.exc import DBAPIError

from relaybus.settings import Settings

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"

app = typer.Typer(help="Database schema migrations (Alembic).", no_args_is_help=True)


def alembic_config(database_url: str) -> Config:
    """An Alembic config for ``migrations/`` pointed at ``database_url``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def _migrate(action: Callable[[Config, str], None], revision: str) -> None:
    """Run an Alembic command; database or revision errors become one line, exit 1."""
    try:
        action(alembic_config(Settings().database_url), revision)
    except (OSError, DBAPIError, CommandError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
        typer.echo(f"relaybus db: {type(err).__name__}: {first}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"database at {revision}")


@app.command()
def upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Apply migrations up to REVISION (default: head).

    Example: relaybus db upgrade
    """
    _migrate(command.upgrade, revision)


@app.command()
def downgrade(
    revision: str = typer.Argument(..., help="Target revision, e.g. -1 or base."),
) -> None:
    """Revert migrations down to REVISION.

    Example: relaybus db downgrade base
    """
    _migrate(command.downgrade, revision)


@app.command()
def current() -> None:
    """Print the database's current revision.

    Example: relaybus db current
    """
    command.current(alembic_config(Settings().database_url))
