"""``relaybus db upgrade|downgrade|current``: Alembic migrations of the relaybus schema."""

from __future__ import annotations

from pathlib import Path

import typer
from alembic import command
from alembic.config import Config

from relaybus.settings import Settings

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"

app = typer.Typer(help="Database schema migrations (Alembic).", no_args_is_help=True)


def alembic_config(database_url: str) -> Config:
    """An Alembic config for ``migrations/`` pointed at ``database_url``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


@app.command()
def upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Apply migrations up to REVISION (default: head).

    Example: relaybus db upgrade
    """
    command.upgrade(alembic_config(Settings().database_url), revision)
    typer.echo(f"database at {revision}")


@app.command()
def downgrade(
    revision: str = typer.Argument(..., help="Target revision, e.g. -1 or base."),
) -> None:
    """Revert migrations down to REVISION.

    Example: relaybus db downgrade base
    """
    command.downgrade(alembic_config(Settings().database_url), revision)
    typer.echo(f"database at {revision}")


@app.command()
def current() -> None:
    """Print the database's current revision.

    Example: relaybus db current
    """
    command.current(alembic_config(Settings().database_url))
