"""Alembic environment: async engine, metadata of every relaybus package."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

# Importing the model modules registers their tables on Base.metadata.
import consumers.inbox  # noqa: F401
import outbox.models  # noqa: F401
import relaybus.audit
import relaybus.locks.postgres  # noqa: F401
from relaybus.db.base import Base
from relaybus.settings import Settings

config = context.config
target_metadata = Base.metadata


# The archive's day partitions (and their indexes, created by ATTACH) are made at run
# time by relaybus_archive_partitions (migration 0010), not by the models: Alembic
# compares only their parent, outbox_archive.
_ARCHIVE_PARTITION = re.compile(r"^outbox_archive_(\d{8}|default)(_\w+)?$")


def _include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    return not (reflected and name is not None and _ARCHIVE_PARTITION.match(name))


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or Settings().database_url


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def _run_sync(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        include_object=_include_object,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_migrations_online() -> None:
    engine = create_async_engine(_url())
    async with engine.connect() as connection:
        await connection.run_sync(_run_sync)
    await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
