"""The fault runs' workload: keyed events committed through the outbox at a steady
rate, each recorded for the history checker (id, key, the key's sequence).

A transaction whose commit fails (the database was killed under it) is
*indeterminate*, as Jepsen calls it: the commit may or may not have happened. Its
events are kept apart (``maybe``) and ``resolve`` later asks the database which of
them exist; only those count as sent. Nothing else may ever show up downstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.db import session_factory
from relaybus.db.errors import database_unavailable
from relaybus.ids import uuid7
from relaybus.outbox.writer import Outbox
from tests.chaos.history import Sent

log = logging.getLogger(__name__)


class KeyedWriter:
    """Commits ``per_txn`` events every ``interval`` seconds over ``keys`` keys (round
    robin) until stopped or ``limit`` events are attempted; ``sent`` is every event
    whose transaction committed, in commit order, ``maybe`` those whose commit's
    outcome is unknown. Sequences are given at the attempt, so a key's sequence
    follows commit order whatever becomes of an indeterminate transaction."""

    def __init__(
        self,
        engine: AsyncEngine,
        aggregate_type: str,
        keys: int = 16,
        per_txn: int = 10,
        interval: float = 0.1,
        event_type: str = "chaos.tick",
        limit: int | None = None,
    ) -> None:
        self.engine, self.agg = engine, aggregate_type
        self.keys, self.per_txn, self.interval = keys, per_txn, interval
        self.type, self.limit = event_type, limit
        self.sent: list[Sent] = []
        self.maybe: list[Sent] = []
        self.failed_commits = 0
        self._seq: dict[str, int] = {}
        self._stop = asyncio.Event()

    async def run(self) -> None:
        outbox = Outbox()
        sessions = session_factory(self.engine)
        n = 0
        while not self._stop.is_set() and (self.limit is None or n < self.limit):
            started = time.monotonic()
            batch = self.per_txn if self.limit is None else min(self.per_txn, self.limit - n)
            events: list[tuple[Sent, int]] = []
            for _ in range(batch):
                key = f"k{n % self.keys:02d}"
                seq = self._seq[key] = self._seq.get(key, 0) + 1
                events.append((Sent(str(uuid7()), key, seq), n))
                n += 1
            try:
                async with sessions() as session, session.begin():
                    for sent, number in events:
                        await outbox.enqueue(
                            session,
                            aggregate_type=self.agg,
                            aggregate_id=sent.key,
                            type=self.type,
                            payload={"n": number},
                            id=uuid.UUID(sent.message_id),
                        )
            except Exception as err:
                if not database_unavailable(err):
                    raise
                # The database went away under the transaction: it may have committed.
                self.failed_commits += 1
                self.maybe += [sent for sent, _ in events]
                log.info("chaos writer: commit failed (%r); %d events indeterminate", err, batch)
            else:
                self.sent += [sent for sent, _ in events]
            pause = self.interval - (time.monotonic() - started)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), max(0.0, pause))

    def stop(self) -> None:
        self._stop.set()

    async def resolve(self) -> int:
        """Move the indeterminate events that did commit (found in the outbox or its
        archive) into ``sent``, in sequence order per key; how many did."""
        if not self.maybe:
            return 0
        ids = [uuid.UUID(s.message_id) for s in self.maybe]
        async with self.engine.connect() as conn:
            found = await conn.execute(
                text(
                    "SELECT id::text FROM outbox WHERE id = ANY(:ids) "
                    "UNION SELECT id::text FROM outbox_archive WHERE id = ANY(:ids)"
                ),
                {"ids": ids},
            )
            committed = set(found.scalars())
        resolved = [s for s in self.maybe if s.message_id in committed]
        self.sent = sorted([*self.sent, *resolved], key=lambda s: (s.key, s.seq))
        self.maybe = []
        return len(resolved)
