"""One contract suite for every ``LockBackend``: PostgreSQL, Redis, Redlock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from redis.asyncio import Redis

from relaybus.db import create_engine
from relaybus.ids import uuid7
from relaybus.locks.base import LockBackend, acquire_within
from relaybus.locks.memory import InMemoryLock
from relaybus.locks.postgres import PostgresLock
from relaybus.locks.redis import RedisLock
from relaybus.locks.redlock import Redlock
from relaybus.settings import Settings
from tests.support.poll import eventually

BACKENDS = ("postgres", "redis", "redlock", "memory")


@pytest.fixture(params=BACKENDS)
async def locks(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[LockBackend]:
    if request.param == "postgres":
        engine = create_engine(settings.database_url)
        yield PostgresLock(engine)
        await engine.dispose()
    elif request.param == "memory":
        yield InMemoryLock()
    elif request.param == "redis":
        client = Redis.from_url(settings.redis_url)
        yield RedisLock(client)
        await client.aclose()
    else:
        clients = [Redis.from_url(u) for u in settings.redlock_urls]
        yield Redlock(clients)
        for c in clients:
            await c.aclose()


def _name() -> str:
    return f"test-{uuid7()}"


async def test_second_acquirer_is_refused_while_held(locks: LockBackend) -> None:
    name = _name()
    first = await locks.try_acquire(name, 10)
    assert first is not None
    assert await locks.try_acquire(name, 10) is None
    assert await locks.release(first)


async def test_concurrent_acquirers_never_both_win(locks: LockBackend) -> None:
    name = _name()
    results = await asyncio.gather(*(locks.try_acquire(name, 10) for _ in range(20)))
    winners = [r for r in results if r is not None]
    # Mutual exclusion: at most one. (Redlock may legitimately let *nobody* win when
    # contenders split the servers' votes; each then releases and retries.)
    assert len(winners) <= 1
    for lease in winners:
        await locks.release(lease)
    # Liveness once the contention is over: a retrying acquirer gets it.
    lease = await acquire_within(locks, name, 10, wait=10)
    assert lease is not None
    await locks.release(lease)


async def test_lease_expires_and_next_holder_gets_a_higher_fence(locks: LockBackend) -> None:
    name = _name()
    first = await locks.try_acquire(name, 0.3)
    assert first is not None
    second = await acquire_within(locks, name, 10, wait=10)
    assert second is not None
    assert second.fence > first.fence
    await locks.release(second)


async def test_release_after_expiry_never_frees_the_new_owner(locks: LockBackend) -> None:
    name = _name()
    stale = await locks.try_acquire(name, 0.3)
    assert stale is not None
    current = await acquire_within(locks, name, 10, wait=10)
    assert current is not None
    assert await locks.release(stale) is False
    assert await locks.extend(stale, 10) is None
    assert await locks.try_acquire(name, 10) is None  # still held by `current`
    assert await locks.release(current)


async def test_extend_keeps_the_lock_past_its_first_ttl(locks: LockBackend) -> None:
    name = _name()
    lease = await locks.try_acquire(name, 0.5)
    assert lease is not None
    extended = await locks.extend(lease, 30)
    assert extended is not None
    assert extended.fence == lease.fence
    assert extended.remaining() > 20
    # Past the original 0.5 s the lock is still held: nobody else gets it.
    loop = asyncio.get_running_loop()
    until = loop.time() + 1.0

    async def past_original_ttl() -> bool:
        assert await locks.try_acquire(name, 10) is None
        return loop.time() > until

    await eventually(past_original_ttl, within=5, what="original ttl passed")
    assert await locks.release(extended)


async def test_non_owner_cannot_extend_or_release(locks: LockBackend) -> None:
    name = _name()
    lease = await locks.try_acquire(name, 10)
    assert lease is not None
    impostor = replace(lease, owner="not-the-owner")
    assert await locks.extend(impostor, 10) is None
    assert await locks.release(impostor) is False
    assert await locks.try_acquire(name, 10) is None
    assert await locks.release(lease)


async def test_fences_strictly_increase_across_holders(locks: LockBackend) -> None:
    name = _name()
    fences = []
    for _ in range(10):
        lease = await locks.try_acquire(name, 10)
        assert lease is not None
        fences.append(lease.fence)
        assert await locks.release(lease)
    assert fences == sorted(set(fences))


async def test_held_count_sees_live_holders_of_a_prefix_only(locks: LockBackend) -> None:
    prefix = f"{_name()}:member:"
    a = await locks.try_acquire(prefix + "a", 5)
    b = await locks.try_acquire(prefix + "b", 5)
    await locks.try_acquire(_name(), 5)  # another prefix
    assert a is not None
    assert b is not None
    assert await locks.held_count(prefix) == 2
    assert await locks.release(a)
    assert await locks.held_count(prefix) == 1
    short = await locks.try_acquire(prefix + "c", 0.2)
    assert short is not None

    async def expired() -> bool:
        return await locks.held_count(prefix) == 1

    await eventually(expired, within=10, what="expired lease no longer counted")


async def test_redlock_holds_with_a_minority_of_servers_down(settings: Settings) -> None:
    live = [Redis.from_url(u) for u in settings.redlock_urls[:2]]
    dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.1)
    lock = Redlock([*live, dead])
    try:
        lease = await lock.try_acquire(_name(), 10)
        assert lease is not None  # 2 of 3 is a quorum
        assert await lock.release(lease)
    finally:
        for c in [*live, dead]:
            await c.aclose()


async def test_redlock_fails_without_quorum_and_leaves_nothing(settings: Settings) -> None:
    live = Redis.from_url(settings.redlock_urls[0])
    dead = [Redis.from_url(f"redis://127.0.0.1:{p}/0", socket_connect_timeout=0.1) for p in (1, 2)]
    lock = Redlock([live, *dead])
    name = _name()
    try:
        assert await lock.try_acquire(name, 10) is None
        # The one server that said yes was released again: a single-server lock can take it.
        single = RedisLock(live)
        lease = await single.try_acquire(name, 10)
        assert lease is not None
        await single.release(lease)
    finally:
        for c in [live, *dead]:
            await c.aclose()
