"""The body of an ``env.py`` for a relaybus ``History`` (the library's, the shop's):
online and offline runs on an async engine, the history's own version table."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from alembic import context
from sqlalchemy import MetaData
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from relaybus.settings import Settings

IncludeObject = Callable[[Any, str | None, str, bool, Any], bool]


def run(metadata: MetaData | None, include_object: IncludeObject | None = None) -> None:
    """Run the current Alembic command against ``sqlalchemy.url`` (or the settings')."""
    config = context.config
    url = config.get_main_option("sqlalchemy.url") or Settings().database_url
    version_table = config.get_main_option("version_table") or "relaybus_alembic_version"
    options: dict[str, Any] = {
        "target_metadata": metadata,
        "version_table": version_table,
        "include_object": include_object,
    }
    if context.is_offline_mode():
        context.configure(url=url, literal_binds=True, **options)
        with context.begin_transaction():
            context.run_migrations()
        return

    def run_sync(connection: Connection) -> None:
        context.configure(connection=connection, compare_type=True, **options)
        with context.begin_transaction():
            context.run_migrations()

    async def online() -> None:
        engine = create_async_engine(url)
        async with engine.connect() as connection:
            await connection.run_sync(run_sync)
        await engine.dispose()

    asyncio.run(online())
