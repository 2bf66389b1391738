"""PostgreSQL lock backend: one lease row per name, expiry judged by the database clock."""

from __future__ import annotations

import time
from datetime import datetime

from sqlalchemy import BigInteger, DateTime, String, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Mapped, mapped_column

from relaybus.db.base import Base
from relaybus.locks.base import Lease, new_owner

# Expiry is decided by PostgreSQL's now(); the local deadline keeps a margin for the
# round trip and for the two clocks running at slightly different rates.
DRIFT_FACTOR = 0.01


class LockRow(Base):
    """``distributed_locks``: the row outlives releases so ``fence`` keeps counting up."""

    __tablename__ = "distributed_locks"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(64))
    fence: Mapped[int] = mapped_column(BigInteger, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


_ACQUIRE = text(
    """
    INSERT INTO distributed_locks AS l (name, owner, fence, expires_at)
    VALUES (:name, :owner, 1, clock_timestamp() + make_interval(secs => :ttl))
    ON CONFLICT (name) DO UPDATE
       SET owner = EXCLUDED.owner, fence = l.fence + 1, expires_at = EXCLUDED.expires_at
     WHERE l.expires_at <= clock_timestamp()
    RETURNING fence
    """
)
_EXTEND = text(
    """
    UPDATE distributed_locks
       SET expires_at = clock_timestamp() + make_interval(secs => :ttl)
     WHERE name = :name AND owner = :owner AND expires_at > clock_timestamp()
    RETURNING fence
    """
)
_RELEASE = text(
    """
    UPDATE distributed_locks SET owner = NULL, expires_at = clock_timestamp()
     WHERE name = :name AND owner = :owner AND expires_at > clock_timestamp()
    """
)

_HELD = text(
    "SELECT count(*) FROM distributed_locks "
    "WHERE starts_with(name, :prefix) AND owner IS NOT NULL AND expires_at > clock_timestamp()"
)

# For fenced writes: true only while ``fence`` is the live holder's token.
FENCE_HOLDS_SQL = (
    "EXISTS (SELECT 1 FROM distributed_locks WHERE name = :lock_name "
    "AND fence = :lock_fence AND expires_at > clock_timestamp())"
)


class PostgresLock:
    """``LockBackend`` on a PostgreSQL table; each call is its own short transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def try_acquire(self, name: str, ttl: float) -> Lease | None:
        owner, started = new_owner(), time.monotonic()
        async with self._engine.begin() as conn:
            params = {"name": name, "owner": owner, "ttl": ttl}
            fence = (await conn.execute(_ACQUIRE, params)).scalar()
        if fence is None:
            return None
        return Lease(name, owner, int(fence), started + ttl * (1 - DRIFT_FACTOR))

    async def extend(self, lease: Lease, ttl: float) -> Lease | None:
        started = time.monotonic()
        params = {"name": lease.name, "owner": lease.owner, "ttl": ttl}
        async with self._engine.begin() as conn:
            fence = (await conn.execute(_EXTEND, params)).scalar()
        if fence is None:
            return None
        return Lease(lease.name, lease.owner, lease.fence, started + ttl * (1 - DRIFT_FACTOR))

    async def release(self, lease: Lease) -> bool:
        async with self._engine.begin() as conn:
            result = await conn.execute(_RELEASE, {"name": lease.name, "owner": lease.owner})
        return bool(result.rowcount)

    async def held_count(self, prefix: str) -> int:
        async with self._engine.connect() as conn:
            return int((await conn.execute(_HELD, {"prefix": prefix})).scalar() or 0)
