"""A logical replication stream from PostgreSQL, read on the asyncio event loop.

psycopg2's replication cursor is the only maintained Python client of the streaming
replication protocol (asyncpg and psycopg 3 have none). Its connection and
``START_REPLICATION`` are blocking calls and run in a thread; after that, every call
(``read_message``, ``send_feedback``) is non-blocking and made from the event loop,
driven by ``loop.add_reader`` on the connection's socket.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extras
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)


class WalStreamError(RuntimeError):
    """The replication connection failed or was closed by the server."""


def libpq_dsn(database_url: str) -> str:
    """A SQLAlchemy URL (``postgresql+asyncpg://…``) as a libpq connection string.
    Holds the password: never log it."""
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


@dataclass(frozen=True)
class WalMessage:
    """One replication message: its start LSN and its pgoutput bytes."""

    lsn: int
    data: bytes


class WalStream:
    """Streams one logical replication slot (pgoutput, protocol 1) from where the
    server last recorded it confirmed (``confirmed_flush_lsn``).

    - ``read`` returns the messages received so far, in WAL order (committed
      transactions only, each whole and in commit order); it waits for at least one.
    - At most ``max_buffer_bytes`` of received messages are held: beyond that the
      socket is no longer read, and the server waits (TCP back-pressure).
    - ``confirm(lsn)`` reports everything before ``lsn`` as durably handled; the
      server then never sends it again and may recycle its WAL. Confirmations only
      move forward. While idle with everything confirmed, psycopg2 also confirms
      the server's keepalive positions, so the slot does not hold WAL written by
      other tables.
    - A broken connection raises ``WalStreamError`` from ``read``; the stream is then
      unusable (open a new one: it resumes at the last confirmation).
    """

    def __init__(
        self,
        dsn: str,
        slot: str,
        publication: str,
        *,
        max_buffer_bytes: int = 64 * 1024 * 1024,
        status_interval: float = 1.0,
    ) -> None:
        self._dsn = dsn
        self.slot = slot
        self.publication = publication
        self._max_buffer_bytes = max_buffer_bytes
        self._status_interval = status_interval
        self._conn: Any = None
        self._cur: Any = None
        self._buffer: deque[WalMessage] = deque()
        self._buffered_bytes = 0
        self._ready = asyncio.Event()
        self._error: BaseException | None = None
        self._reading = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.confirmed = 0

    async def open(self) -> None:
        """Connect, create the slot if it does not exist, start streaming.

        Raises ``WalStreamError`` if the slot is in use by another connection (one
        consumer per slot is enforced by the server) or the server refuses.
        """
        self._loop = asyncio.get_running_loop()
        try:
            self._conn, self._cur = await asyncio.to_thread(self._start)
        except psycopg2.Error as err:
            raise WalStreamError(f"slot {self.slot}: {str(err).strip()}") from err
        self._resume_reading()

    def _start(self) -> tuple[Any, Any]:
        conn = psycopg2.connect(
            self._dsn, connection_factory=psycopg2.extras.LogicalReplicationConnection
        )
        try:
            cur = conn.cursor()
            try:
                cur.create_replication_slot(self.slot, output_plugin="pgoutput")
                log.warning("created replication slot %s (pgoutput)", self.slot)
            except psycopg2.errors.DuplicateObject:
                pass  # the usual case: resume where the slot was confirmed
            cur.start_replication(
                slot_name=self.slot,
                decode=False,
                options={"proto_version": "1", "publication_names": self.publication},
                status_interval=self._status_interval,
            )
        except BaseException:
            conn.close()
            raise
        return conn, cur

    def _resume_reading(self) -> None:
        if not self._reading and self._cur is not None and self._loop is not None:
            self._loop.add_reader(self._cur.fileno(), self._on_readable)
            self._reading = True
            # Messages libpq already took off the socket before the pause would not
            # make it readable again: drain them now.
            self._loop.call_soon(self._on_readable_if_reading)

    def _on_readable_if_reading(self) -> None:
        if self._reading:
            self._on_readable()

    def _pause_reading(self) -> None:
        if self._reading and self._cur is not None and self._loop is not None:
            self._loop.remove_reader(self._cur.fileno())
            self._reading = False

    def _on_readable(self) -> None:
        # Drain what libpq has without blocking: read_message returns None once the
        # socket has nothing more (it also answers the server's keepalives).
        try:
            while self._buffered_bytes < self._max_buffer_bytes:
                msg = self._cur.read_message()
                if msg is None:
                    break
                payload: bytes = msg.payload
                self._buffer.append(WalMessage(msg.data_start, payload))
                self._buffered_bytes += len(payload)
            else:
                self._pause_reading()  # full: the server waits until we catch up
        except (psycopg2.Error, OSError) as err:
            self._error = err
            self._pause_reading()
        self._ready.set()

    async def read(self) -> list[WalMessage]:
        """The messages received so far (at least one), oldest first."""
        while not self._buffer:
            if self._error is not None:
                raise WalStreamError(f"slot {self.slot}: {str(self._error).strip()}")
            self._ready.clear()
            await self._ready.wait()
        out = list(self._buffer)
        self._buffer.clear()
        self._buffered_bytes = 0
        if self._error is None:
            self._resume_reading()
        return out

    def confirm(self, lsn: int) -> None:
        """Tell the server everything before ``lsn`` is handled (sent at once)."""
        if lsn <= self.confirmed or self._cur is None:
            return
        self.confirmed = lsn
        try:
            self._cur.send_feedback(write_lsn=lsn, flush_lsn=lsn, force=True)
        except (psycopg2.Error, OSError) as err:
            # Not lost: the next confirmation (or keepalive reply) carries it again.
            self._error = err
            self._ready.set()

    async def close(self) -> None:
        """Stop reading and close the connection (unconfirmed messages will be sent
        again to whoever streams the slot next)."""
        self._pause_reading()
        if self._conn is not None:
            conn, self._conn, self._cur = self._conn, None, None
            conn.close()
