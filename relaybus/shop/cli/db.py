"""``relaybus shop-db upgrade|downgrade|current``: the shop's schemas (orders,
inventory, payments), a history of their own (version table shop_alembic_version).

``upgrade`` brings relaybus's own tables to their head first: the shop writes to the
outbox in its transactions, so it needs them.
"""

from __future__ import annotations

from pathlib import Path

import typer
from alembic import command

from relaybus.db.migrations import LIBRARY, History, alembic_config
from relaybus.db.on_database import migrate
from relaybus.settings import Settings

SHOP = History(
    name="shop",
    location=Path(__file__).resolve().parents[1] / "migrations",
    version_table="shop_alembic_version",
)

app = typer.Typer(
    help="The shop's schemas (Alembic, version table shop_alembic_version).",
    no_args_is_help=True,
)


@app.command()
def upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Apply relaybus's migrations, then the shop's up to REVISION (default: head).

    Example: relaybus shop-db upgrade
    """
    migrate(command.upgrade, "head", LIBRARY)
    migrate(command.upgrade, revision, SHOP)


@app.command()
def downgrade(
    revision: str = typer.Argument(..., help="Target revision, e.g. -1 or base."),
) -> None:
    """Revert the shop's migrations down to REVISION (relaybus's tables stay).

    Example: relaybus shop-db downgrade base
    """
    migrate(command.downgrade, revision, SHOP)


@app.command()
def current() -> None:
    """Print the shop schema's current revision.

    Example: relaybus shop-db current
    """
    command.current(alembic_config(Settings().database_url, SHOP))
