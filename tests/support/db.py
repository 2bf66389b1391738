"""Throw-away PostgreSQL databases for tests that need an empty schema."""

from __future__ import annotations

import asyncio
import re
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


def use_database(database_url: str, name: str) -> str:
    """The URL of database ``name`` next to ``database_url``'s, created if missing and
    brought to head (relaybus's tables, then the shop's)."""
    from alembic import command

    from relaybus.db.migrations import LIBRARY, alembic_config
    from relaybus.shop.cli.db import SHOP

    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise ValueError(f"RELAYBUS_TEST_DATABASE: not a plain database name: {name!r}")
    url = make_url(database_url).set(database=name).render_as_string(hide_password=False)

    async def create() -> None:
        engine = create_async_engine(database_url, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                found = await conn.exec_driver_sql(
                    "SELECT 1 FROM pg_database WHERE datname = $1", (name,)
                )
                if found.first() is None:
                    await conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        finally:
            await engine.dispose()

    asyncio.run(create())
    command.upgrade(alembic_config(url, LIBRARY), "head")
    command.upgrade(alembic_config(url, SHOP), "head")
    return url
