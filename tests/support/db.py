"""Throw-away PostgreSQL databases for tests that need an empty schema."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine


async def _admin(url: str, sql: str) -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.exec_driver_sql(sql)
    finally:
        await engine.dispose()


@contextmanager
def scratch_database(database_url: str) -> Iterator[str]:
    """Create an empty database next to ``database_url``'s, yield its URL, drop it after.

    Synchronous on purpose: Alembic's env runs its own event loop.
    """
    name = f"relaybus_test_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(database_url, f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(database_url).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_admin(database_url, f'DROP DATABASE "{name}" WITH (FORCE)'))
