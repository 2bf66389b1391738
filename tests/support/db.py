"""Throw-away PostgreSQL databases for tests that need an empty schema."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
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
        asyncio.run(_drop(database_url, name))


async def _drop(database_url: str, name: str) -> None:
    """Drop ``name`` once its last session is gone. Without FORCE: that needs the
    right to signal every backend, and the relaybus role may not signal an autovacuum
    worker (which a plain DROP DATABASE stops by itself); a test's own processes may
    take a moment to disconnect, hence the retries (30 s at most)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            await _admin(database_url, f'DROP DATABASE IF EXISTS "{name}"')
            return
        except DBAPIError as err:
            if "being accessed by other users" not in str(err) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
