"""PostgreSQL (SQLAlchemy + asyncpg) and Redis round trips on the stack's servers."""

from __future__ import annotations

import uuid

import redis.asyncio as aioredis
from sqlalchemy import text

from relaybus.db import create_engine
from relaybus.settings import Settings


async def test_postgres_round_trip_and_logical_wal(settings: Settings) -> None:
    engine = create_engine(settings.database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TEMP TABLE smoke (id uuid primary key, v text)"))
            key = uuid.uuid4()
            await conn.execute(text("INSERT INTO smoke VALUES (:i, :v)"), {"i": key, "v": "x"})
            row = (await conn.execute(text("SELECT v FROM smoke WHERE id = :i"), {"i": key})).one()
            assert row.v == "x"
            wal = (await conn.execute(text("SHOW wal_level"))).scalar_one()
            assert wal == "logical"
    finally:
        await engine.dispose()


async def test_redis_set_get(settings: Settings) -> None:
    client = aioredis.from_url(settings.redis_url)
    try:
        key = f"smoke:{uuid.uuid4().hex}"
        assert await client.set(key, "v", px=10_000, nx=True)
        assert await client.get(key) == b"v"
        assert not await client.set(key, "w", nx=True)
    finally:
        await client.aclose()
