"""Async engine and session factory construction (no engine exists until asked for)."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.ext.asyncio import create_async_engine as _create_async_engine


def create_engine(
    url: str, *, pool_size: int = 10, server_settings: Mapping[str, str] | None = None
) -> AsyncEngine:
    """An asyncpg-backed engine whose pool handles a lost database on use, not on checkout.

    After a database restart the first statement on a stale connection raises (a
    ``DBAPIError`` with ``connection_invalidated``); the pool then replaces all of its
    connections at once, so the next attempt succeeds. Every long-running caller
    already retries a failed unit of work: relay drainers and its coordinator loop,
    consumers through their retry policy.

    No ``pool_pre_ping``: with asyncpg it is three round trips on every checkout
    (``BEGIN``, an empty query, ``ROLLBACK``), as many as a one-statement transaction
    needs itself.

    ``hide_parameters``: statement errors never carry the bound values (a handler's
    failure text ends up in dead letters and logs; values may be personal or secret).

    ``server_settings``: session parameters every connection of the pool starts with
    (e.g. the relay's ``plan_cache_mode``).
    """
    connect_args = {"server_settings": dict(server_settings)} if server_settings else {}
    return _create_async_engine(
        url, pool_size=pool_size, hide_parameters=True, connect_args=connect_args
    )


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded attributes after commit (no surprise lazy loads in async)."""
    return async_sessionmaker(engine, expire_on_commit=False)
