"""Redis lock backend: ``SET NX PX`` + random owner token; Lua for the compare-and-act steps."""

from __future__ import annotations

import time

from redis.asyncio import Redis

from relaybus.locks.base import Lease, new_owner

DRIFT_FACTOR = 0.01

# The lock key and its fence counter share a hash tag, so both live on one shard.
ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return false
"""
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


def lock_key(name: str) -> str:
    return f"relaybus:lock:{{{name}}}"


def fence_key(name: str) -> str:
    return f"relaybus:lock:{{{name}}}:fence"


def held_names(prefix: str) -> str:
    """A SCAN pattern for the lock keys of names starting with ``prefix`` (glob-escaped)."""
    escaped = "".join(f"\\{c}" if c in "*?[]\\" else c for c in prefix)
    return f"relaybus:lock:{{{escaped}*}}"


async def count_held(client: Redis, prefix: str) -> set[bytes]:
    """Lock keys (not fence counters) of names starting with ``prefix`` on one server."""
    return {key async for key in client.scan_iter(match=held_names(prefix), count=1000)}


def ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisLock:
    """``LockBackend`` on one Redis server.

    Safe release/extend: the Lua scripts act only if the key still holds our token,
    so an expired holder can never delete or prolong the next holder's lock. The
    fence is ``INCR`` of a counter key that never expires. One server is a single
    point of failure (and a failover can lose a lock): use ``Redlock`` where that
    matters.
    """

    def __init__(self, client: Redis) -> None:
        self._client = client
        self._acquire = client.register_script(ACQUIRE)
        self._release = client.register_script(RELEASE)
        self._extend = client.register_script(EXTEND)

    async def try_acquire(self, name: str, ttl: float) -> Lease | None:
        owner, started = new_owner(), time.monotonic()
        fence = await self._acquire(keys=[lock_key(name), fence_key(name)], args=[owner, ms(ttl)])
        if fence is None:
            return None
        return Lease(name, owner, int(fence), started + ttl * (1 - DRIFT_FACTOR))

    async def extend(self, lease: Lease, ttl: float) -> Lease | None:
        started = time.monotonic()
        if not await self._extend(keys=[lock_key(lease.name)], args=[lease.owner, ms(ttl)]):
            return None
        return Lease(lease.name, lease.owner, lease.fence, started + ttl * (1 - DRIFT_FACTOR))

    async def release(self, lease: Lease) -> bool:
        return bool(await self._release(keys=[lock_key(lease.name)], args=[lease.owner]))

    async def held_count(self, prefix: str) -> int:
        # Lock keys expire with their lease; fence counters end in ":fence" and never
        # match the pattern (it ends at the closing brace).
        return len(await count_held(self._client, prefix))
