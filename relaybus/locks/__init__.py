"""Distributed locks: one interface (``LockBackend``), three backends.

- ``PostgresLock``: a lease row per lock name (database clock decides expiry).
- ``RedisLock``: ``SET NX PX`` with a random owner token; Lua for safe release/extend.
- ``Redlock``: the Redlock algorithm over N independent Redis servers.

Every backend hands out a fencing token that strictly increases per lock name, so a
resource can reject writes from a holder whose lease expired while it was paused.
"""

from relaybus.locks.base import Lease, LockBackend, acquire_within

__all__ = ["Lease", "LockBackend", "acquire_within"]
