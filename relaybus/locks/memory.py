"""An in-process ``LockBackend`` for fast tests of code that takes locks (the relay)."""

from __future__ import annotations

import time
from collections.abc import Callable

from relaybus.locks.base import Lease, new_owner


class InMemoryLock:
    """``LockBackend`` in one process's memory, on its monotonic clock (or ``clock``).

    Same contract as the real backends (and the same contract suite): non-blocking
    acquire, expiry after ``ttl``, owner-only extend/release, fences that strictly
    increase per name. Shared by whatever holds the same instance; nothing is
    distributed, so it stands in for a lock service only inside one test process.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._held: dict[str, tuple[str, float]] = {}  # name -> (owner, expires)
        self._fences: dict[str, int] = {}

    def _live(self, name: str) -> tuple[str, float] | None:
        entry = self._held.get(name)
        if entry is not None and entry[1] > self._clock():
            return entry
        return None

    async def try_acquire(self, name: str, ttl: float) -> Lease | None:
        if self._live(name) is not None:
            return None
        owner, now = new_owner(), self._clock()
        fence = self._fences.get(name, 0) + 1
        self._fences[name] = fence
        self._held[name] = (owner, now + ttl)
        return Lease(name, owner, fence, now + ttl)

    async def extend(self, lease: Lease, ttl: float) -> Lease | None:
        entry = self._live(lease.name)
        if entry is None or entry[0] != lease.owner:
            return None
        now = self._clock()
        self._held[lease.name] = (lease.owner, now + ttl)
        return Lease(lease.name, lease.owner, lease.fence, now + ttl)

    async def release(self, lease: Lease) -> bool:
        entry = self._live(lease.name)
        if entry is None or entry[0] != lease.owner:
            return False
        del self._held[lease.name]
        return True

    async def held_count(self, prefix: str) -> int:
        return sum(1 for name in list(self._held) if name.startswith(prefix) and self._live(name))

    def fence_holds(self, name: str, fence: int) -> bool:
        """Whether ``fence`` is the live holder's token (for fenced in-memory writes)."""
        return self._live(name) is not None and self._fences.get(name) == fence
