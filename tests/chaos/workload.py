"""The fault runs' workload: keyed events committed through the outbox at a steady
rate, each recorded for the history checker (id, key, the key's sequence)."""

from __future__ import annotations

import asyncio
import contextlib
import time

from sqlalchemy.ext.asyncio import AsyncEngine

from tests.chaos.history import Sent
from tests.support.outboxdata import Event, enqueue


class KeyedWriter:
    """Commits ``per_txn`` events every ``interval`` seconds over ``keys`` keys (round
    robin) until stopped or ``limit`` events are written; ``sent`` is every committed
    event in commit order."""

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
        self._seq: dict[str, int] = {}
        self._stop = asyncio.Event()

    async def run(self) -> None:
        n = 0
        while not self._stop.is_set() and (self.limit is None or n < self.limit):
            started = time.monotonic()
            events = []
            batch = self.per_txn if self.limit is None else min(self.per_txn, self.limit - n)
            for _ in range(batch):
                key = f"k{n % self.keys:02d}"
                events.append(Event(key, self.type, {"n": n}))
                n += 1
            ids = await enqueue(self.engine, self.agg, events, chunk=len(events))
            for event, message_id in zip(events, ids, strict=True):
                seq = self._seq[event.key] = self._seq.get(event.key, 0) + 1
                self.sent.append(Sent(str(message_id), event.key, seq))
            pause = self.interval - (time.monotonic() - started)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), max(0.0, pause))

    def stop(self) -> None:
        self._stop.set()
