"""Redlock: a lock held on a majority of N independent Redis servers."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from relaybus.locks.base import Lease, new_owner
from relaybus.locks.redis import EXTEND, RELEASE, count_held, fence_key, lock_key, ms

# Take the lock on one server and report that server's fence counter.
ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return tonumber(redis.call('GET', KEYS[2]) or '0')
end
return false
"""
# Raise the server's fence counter to the agreed value (never lower it).
RECORD_FENCE = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""


class Redlock:
    """``LockBackend`` over ``clients`` (independent servers), quorum = N // 2 + 1.

    Acquire: try every server with the same random token and a short per-server
    timeout; the lock is held if a quorum said yes and time is left of the TTL after
    subtracting the time spent and a clock-drift allowance. Otherwise every server
    is released, so a failed attempt leaves nothing behind.

    Fencing (which plain Redlock lacks): each server keeps a counter; the acquirer
    takes max(counter over its quorum) + 1 and writes it back to a quorum. Any two
    quorums share a server, so the next holder sees at least this value and goes
    higher. Like Redlock itself this assumes bounded clock drift and pauses shorter
    than the TTL; the fence is what protects the resource when that fails.
    """

    def __init__(
        self, clients: Sequence[Redis], *, server_timeout: float = 0.2, drift_factor: float = 0.01
    ) -> None:
        if not clients:
            raise ValueError("Redlock needs at least one Redis server")
        self._clients = list(clients)
        self._quorum = len(clients) // 2 + 1
        self._timeout = server_timeout
        self._drift = drift_factor
        self._acquire = [c.register_script(ACQUIRE) for c in clients]
        self._record = [c.register_script(RECORD_FENCE) for c in clients]
        self._release = [c.register_script(RELEASE) for c in clients]
        self._extend = [c.register_script(EXTEND) for c in clients]

    async def _each(self, calls: Sequence[Awaitable[Any]]) -> list[Any]:
        """Run per-server calls concurrently; a server that errs or is slow counts as 'no'."""

        async def guarded(call: Awaitable[Any]) -> Any:
            try:
                return await asyncio.wait_for(call, self._timeout)
            except (RedisError, OSError, TimeoutError):
                return None

        return await asyncio.gather(*(guarded(c) for c in calls))

    def _validity(self, started: float, ttl: float) -> float:
        return started + ttl - (ttl * self._drift + 0.002)

    async def try_acquire(self, name: str, ttl: float) -> Lease | None:
        owner, started = new_owner(), time.monotonic()
        keys = [lock_key(name), fence_key(name)]
        answers = await self._each([s(keys=keys, args=[owner, ms(ttl)]) for s in self._acquire])
        won = [i for i, a in enumerate(answers) if a is not None]
        valid_until = self._validity(started, ttl)
        if len(won) >= self._quorum and valid_until > time.monotonic():
            fence = max(int(answers[i]) for i in won) + 1
            recorded = await self._each(
                [self._record[i](keys=[fence_key(name)], args=[fence]) for i in won]
            )
            confirmed = sum(r is not None for r in recorded)
            if confirmed >= self._quorum and valid_until > time.monotonic():
                return Lease(name, owner, fence, valid_until)
        await self._each([s(keys=[lock_key(name)], args=[owner]) for s in self._release])
        return None

    async def extend(self, lease: Lease, ttl: float) -> Lease | None:
        started = time.monotonic()
        answers = await self._each(
            [s(keys=[lock_key(lease.name)], args=[lease.owner, ms(ttl)]) for s in self._extend]
        )
        valid_until = self._validity(started, ttl)
        if sum(bool(a) for a in answers) >= self._quorum and valid_until > time.monotonic():
            return Lease(lease.name, lease.owner, lease.fence, valid_until)
        return None

    async def release(self, lease: Lease) -> bool:
        answers = await self._each(
            [s(keys=[lock_key(lease.name)], args=[lease.owner]) for s in self._release]
        )
        return any(bool(a) for a in answers)

    async def held_count(self, prefix: str) -> int:
        """Names held on a quorum of the servers that answered."""
        per_server = await self._each([count_held(c, prefix) for c in self._clients])
        seen = Counter(key for keys in per_server if keys for key in keys)
        return sum(1 for n in seen.values() if n >= self._quorum)
