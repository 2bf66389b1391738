"""Async engine and session factory construction (no engine exists until asked for)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.ext.asyncio import create_async_engine as _create_async_engine


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    """An asyncpg-backed engine; ``pool_pre_ping`` so a restarted database is survived."""
    return _create_async_engine(url, pool_size=pool_size, pool_pre_ping=True)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded attributes after commit (no surprise lazy loads in async)."""
    return async_sessionmaker(engine, expire_on_commit=False)
