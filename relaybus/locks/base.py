"""The lock interface all backends implement, and a blocking acquire helper."""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from typing import Protocol

from relaybus.backoff import Backoff


@dataclass(frozen=True)
class Lease:
    """A held lock: its ``name``, the holder's random ``owner`` token, a ``fence``.

    ``fence`` strictly increases each time the lock changes hands (or is re-taken),
    per name. ``valid_until`` is this process's monotonic-clock estimate of expiry
    (already reduced by the backend's clock-drift allowance).
    """

    name: str
    owner: str
    fence: int
    valid_until: float

    def remaining(self) -> float:
        """Seconds of validity left by the local monotonic clock (negative if expired)."""
        return self.valid_until - time.monotonic()


def new_owner() -> str:
    """A random owner token (128 bits): only the holder can release or extend."""
    return secrets.token_hex(16)


class LockBackend(Protocol):
    """A distributed lock service.

    - ``try_acquire`` never blocks waiting for a holder: it returns a ``Lease`` or None.
    - A lease expires ``ttl`` seconds after it was taken or last extended, whether or
      not its holder is alive; then anyone may take the lock (with a higher fence).
    - ``release`` / ``extend`` act only if the caller still owns the lock: releasing
      after expiry and someone else's acquire leaves the new owner's lock alone.
    Errors talking to the backing store propagate (the caller decides to retry).
    """

    async def try_acquire(self, name: str, ttl: float) -> Lease | None: ...

    async def extend(self, lease: Lease, ttl: float) -> Lease | None: ...

    async def release(self, lease: Lease) -> bool: ...

    async def held_count(self, prefix: str) -> int:
        """How many locks whose name starts with ``prefix`` are held (unexpired) now.

        A snapshot, for sizing shares among live members (the relay counts its
        ``relay-member:`` locks); it may be stale by the time it is used.
        """
        ...


async def acquire_within(backend: LockBackend, name: str, ttl: float, wait: float) -> Lease | None:
    """Retry ``try_acquire`` with jittered backoff for up to ``wait`` seconds."""
    deadline = time.monotonic() + wait
    backoff = Backoff(initial=0.01, maximum=0.5)
    while True:
        lease = await backend.try_acquire(name, ttl)
        if lease is not None or time.monotonic() >= deadline:
            return lease
        await asyncio.sleep(min(backoff.next_delay(), max(0.0, deadline - time.monotonic())))
