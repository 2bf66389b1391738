"""``relaybus db upgrade|downgrade|current``: Alembic migrations of relaybus's own tables
(outbox, inbox, archive, audit log, locks, stalls) and nothing else; an application's
schemas are its own history (the shop's: ``relaybus shop-db``)."""

from __future__ import annotations

import typer
from alembic import command

from relaybus.db.migrations import LIBRARY, alembic_config
from relaybus.db.on_database import migrate
from relaybus.settings import Settings

app = typer.Typer(
    help="relaybus's own tables (Alembic, version table relaybus_alembic_version).",
    no_args_is_help=True,
)


@app.command()
def upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Apply migrations up to REVISION (default: head).

    Example: relaybus db upgrade
    """
    migrate(command.upgrade, revision)


@app.command()
def downgrade(
    revision: str = typer.Argument(..., help="Target revision, e.g. -1 or base."),
) -> None:
    """Revert migrations down to REVISION.

    Example: relaybus db downgrade base
    """
    migrate(command.downgrade, revision)


@app.command()
def current() -> None:
    """Print the database's current revision.

    Example: relaybus db current
    """
    command.current(alembic_config(Settings().database_url, LIBRARY))
