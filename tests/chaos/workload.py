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
    robin) until stopped; ``sent`` is every committed event in commit order."""

    def __init__(
        self,
        engine: AsyncEngine,
        aggregate_type: str,
        keys: int = 16,
        per_txn: int = 10,
        interval: float = 0.1,
    ) -> None:
        self.engine, self.agg = engine, aggregate_type
        self.keys, self.per_txn, self.interval = keys, per_txn, interval
        self.sent: list[Sent] = []
        self._seq: dict[str, int] = {}
        self._stop = asyncio.Event()

    async def run(self) -> None:
        n = 0
        while not self._stop.is_set():
            started = time.monotonic()
            events = []
            for _ in range(self.per_txn):
                key = f"k{n % self.keys:02d}"
                events.append(Event(key, "chaos.tick", {"n": n}))
                n += 1
            ids = await enqueue(self.engine, self.agg, events, chunk=self.per_txn)
            for event, message_id in zip(events, ids, strict=True):
                seq = self._seq[event.key] = self._seq.get(event.key, 0) + 1
                self.sent.append(Sent(str(message_id), event.key, seq))
            pause = self.interval - (time.monotonic() - started)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), max(0.0, pause))

    def stop(self) -> None:
        self._stop.set()
