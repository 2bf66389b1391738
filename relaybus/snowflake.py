"""64-bit snowflake business ids: timestamp, leased worker id, per-millisecond sequence."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable

from relaybus.locks.base import Lease, LockBackend

EPOCH_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: 41 bits of ms last until ~2095
WORKER_BITS = 10
SEQUENCE_BITS = 12
MAX_WORKER = (1 << WORKER_BITS) - 1
MAX_SEQUENCE = (1 << SEQUENCE_BITS) - 1


class ClockMovedBackwards(RuntimeError):
    """The wall clock went back further than the generator is willing to wait out."""


class Snowflake:
    """Generates ids ``(ms since EPOCH) << 22 | worker << 12 | sequence``; thread-safe.

    Ids from one generator strictly increase. When the sequence is exhausted within a
    millisecond, it waits for the next one. When the clock moves backwards it keeps
    using the last timestamp it issued: by up to ``max_backwards_ms`` it *waits* for
    the clock to catch up; beyond that it *fails loudly* with ``ClockMovedBackwards``
    rather than risk a duplicate or a smaller id.
    """

    def __init__(
        self,
        worker_id: int,
        *,
        max_backwards_ms: int = 50,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        if not 0 <= worker_id <= MAX_WORKER:
            raise ValueError(f"worker_id must be in 0..{MAX_WORKER}, not {worker_id}")
        self.worker_id = worker_id
        self._max_back = max_backwards_ms
        self._clock = clock_ms
        self._lock = threading.Lock()
        self._last_ms = -1
        self._sequence = 0

    def next_id(self) -> int:
        """A new id, strictly greater than every id this generator issued before."""
        with self._lock:
            now = self._wait_for_clock(self._clock())
            if now == self._last_ms:
                self._sequence = (self._sequence + 1) & MAX_SEQUENCE
                if self._sequence == 0:  # 4096 ids this millisecond: wait for the next
                    now = self._wait_for_clock(self._last_ms + 1)
            else:
                self._sequence = 0
            self._last_ms = now
            return (
                (now - EPOCH_MS) << (WORKER_BITS + SEQUENCE_BITS)
                | (self.worker_id << SEQUENCE_BITS)
                | self._sequence
            )

    def _wait_for_clock(self, target: int) -> int:
        now = self._clock()
        floor = max(target, self._last_ms)
        if self._last_ms - now > self._max_back:
            raise ClockMovedBackwards(
                f"clock is {self._last_ms - now} ms behind the last id issued; refusing"
            )
        while now < floor:
            time.sleep((floor - now) / 1000)
            now = self._clock()
        return now


def parse(snowflake_id: int) -> tuple[int, int, int]:
    """Split an id into (unix ms, worker id, sequence)."""
    seq = snowflake_id & MAX_SEQUENCE
    worker = (snowflake_id >> SEQUENCE_BITS) & MAX_WORKER
    ms = (snowflake_id >> (WORKER_BITS + SEQUENCE_BITS)) + EPOCH_MS
    return ms, worker, seq


class WorkerIdLease:
    """Leases a snowflake worker id through a distributed lock and keeps it renewed.

    ``acquire`` takes the first free ``snowflake-worker-<n>`` lock (n in 0..1023), so
    two live processes never hold the same worker id. A background task extends it
    every ``ttl/3``; if an extension fails the lease is marked lost and ``generator``
    raises from then on, because another process may now own the id.
    """

    def __init__(self, locks: LockBackend, *, ttl: float = 30.0) -> None:
        self._locks = locks
        self._ttl = ttl
        self._lease: Lease | None = None
        self._lost = False
        self._task: asyncio.Task[None] | None = None
        self._snowflake: Snowflake | None = None

    async def acquire(self) -> Snowflake:
        for worker_id in range(MAX_WORKER + 1):
            lease = await self._locks.try_acquire(f"snowflake-worker-{worker_id}", self._ttl)
            if lease is not None:
                self._lease = lease
                self._snowflake = Snowflake(worker_id)
                self._task = asyncio.create_task(self._renew())
                return self._snowflake
        raise RuntimeError("all 1024 snowflake worker ids are leased")

    async def _renew(self) -> None:
        while self._lease is not None:
            await asyncio.sleep(self._ttl / 3)
            lease = await self._locks.extend(self._lease, self._ttl)
            if lease is None:
                self._lost = True
                return
            self._lease = lease

    def next_id(self) -> int:
        """An id from the leased worker; raises if the lease was lost or never taken."""
        if self._snowflake is None or self._lost or self._lease is None:
            raise RuntimeError("snowflake worker id lease is not held")
        if self._lease.remaining() <= 0:
            raise RuntimeError("snowflake worker id lease expired")
        return self._snowflake.next_id()

    async def release(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._lease is not None:
            await self._locks.release(self._lease)
            self._lease = None
