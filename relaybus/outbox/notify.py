"""LISTEN for the outbox writers' NOTIFY, with reconnects; callers still poll as fallback."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from relaybus.backoff import Backoff

CHANNEL = "relaybus_outbox"
log = logging.getLogger(__name__)


def asyncpg_dsn(database_url: str) -> str:
    """A plain ``postgresql://`` DSN from a SQLAlchemy ``postgresql+asyncpg://`` URL."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


class OutboxListener:
    """Calls ``on_notify(payload)`` whenever a transaction that inserted outbox rows
    commits; the payload is the row's partition (as text), or ``""`` when any
    partition may have rows (after a reconnect).

    Runs until cancelled. If the connection drops it reconnects with backoff; in the
    meantime nothing is lost, because the relay also polls.
    """

    def __init__(self, database_url: str, on_notify: Callable[[str], None]) -> None:
        self._dsn = asyncpg_dsn(database_url)
        self._on_notify = on_notify

    async def run(self) -> None:
        backoff = Backoff(initial=0.5, maximum=10.0)
        while True:
            try:
                conn = await asyncpg.connect(self._dsn)
            except (OSError, asyncpg.PostgresError) as err:
                log.warning("LISTEN connection failed: %r", err)
                await asyncio.sleep(backoff.next_delay())
                continue
            backoff.reset()
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _c, ev=lost: ev.set())
            try:
                await conn.add_listener(CHANNEL, self._callback)
                self._on_notify("")  # rows may have arrived while we were not listening
                await lost.wait()
            finally:
                try:
                    await conn.close()
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
                    # The connection is already gone; the loop reconnects.
                    log.info("LISTEN connection close failed: %r", err)

    def _callback(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self._on_notify(payload)
