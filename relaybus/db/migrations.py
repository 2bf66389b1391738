"""relaybus's own tables (outbox, inbox, archive, audit log, locks, stalls), migrated
by Alembic in their own history with their own version table.

Two ways to create them in a service's database:

- ``relaybus db upgrade`` (``alembic_config`` + ``alembic.command``), or
- inside the service's own Alembic ``env.py``: ``upgrade(connection)`` before the
  service's migrations run, so its ``alembic upgrade head`` brings relaybus's tables
  to relaybus's head first (docs/migrations.md shows the lines).

Either way the version lives in ``relaybus_alembic_version``: relaybus's revisions
never mix with the service's history (no shared ids, no second head). An application
built on relaybus (the shop) keeps its own ``History`` the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection


@dataclass(frozen=True)
class History:
    """One Alembic history: its scripts and the table holding its version."""

    name: str
    location: Path
    version_table: str


LIBRARY = History(
    name="relaybus",
    location=Path(__file__).resolve().parents[1] / "migrations",
    version_table="relaybus_alembic_version",
)


def alembic_config(database_url: str, history: History = LIBRARY) -> Config:
    """An Alembic config for ``history`` pointed at ``database_url`` (its ``env.py``
    reads the version table from the ``version_table`` option)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(history.location))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    cfg.set_main_option("version_table", history.version_table)
    return cfg


def upgrade(connection: Connection, revision: str = "head", history: History = LIBRARY) -> None:
    """Bring ``history``'s tables to ``revision`` on ``connection`` (a synchronous
    SQLAlchemy connection, as an Alembic ``env.py`` has).

    Joins the caller's transaction if one is open, else commits its own. Uses no
    Alembic ``context`` proxy, so a service's ``env.py`` can call it before its own
    ``context.configure``. Failure: the migration's exception propagates (with a
    transaction of our own, nothing of it is kept).
    """
    script = ScriptDirectory(str(history.location))

    def steps(current: str, _context: MigrationContext) -> Any:
        return script._upgrade_revs(revision, current)  # what `alembic upgrade` runs

    migration = MigrationContext.configure(
        connection, opts={"version_table": history.version_table, "fn": steps, "script": script}
    )

    def run() -> None:
        with Operations.context(migration):
            migration.run_migrations()

    if connection.in_transaction():
        run()
    else:
        with connection.begin():
            run()


def current(connection: Connection, history: History = LIBRARY) -> str | None:
    """``history``'s revision on ``connection`` (None: its tables were never created)."""
    migration = MigrationContext.configure(
        connection, opts={"version_table": history.version_table}
    )
    return migration.get_current_revision()
