"""One contract suite for every ``OutboxStore``: PostgreSQL and the in-memory fake.

Rows of a key that is unique to the test land in one partition; the suite checks
sequence order, the hold-back behind a failed row, the byte budget and fencing.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from sqlalchemy import text

from relaybus.db import create_engine
from relaybus.ids import uuid7
from relaybus.locks.base import LockBackend
from relaybus.locks.memory import InMemoryLock
from relaybus.locks.postgres import PostgresLock
from relaybus.message import Message
from relaybus.outbox.memory import InMemoryOutboxStore
from relaybus.outbox.store import OutboxStore, PostgresOutboxStore
from relaybus.outbox.writer import partition_for
from relaybus.settings import Settings
from tests.support.outboxdata import Event, enqueue


@dataclass
class Subject:
    store: OutboxStore
    locks: LockBackend
    add: Callable[[str, list[dict[str, object]]], Awaitable[None]]


@pytest.fixture(params=["postgres", "memory"])
async def subject(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[Subject]:
    if request.param == "memory":
        locks = InMemoryLock()
        memory = InMemoryOutboxStore(locks, settings.outbox_partitions)

        async def add_memory(key: str, payloads: list[dict[str, object]]) -> None:
            for p in payloads:
                memory.add(Message.from_data("contract.event", "contract", key, p))

        yield Subject(memory, locks, add_memory)
        return
    engine = create_engine(settings.database_url)

    async def add_pg(key: str, payloads: list[dict[str, object]]) -> None:
        await enqueue(engine, "contract", [Event(key, "contract.event", p) for p in payloads])

    yield Subject(PostgresOutboxStore(engine), PostgresLock(engine), add_pg)
    async with engine.begin() as conn:  # leave no failed rows behind for other tests
        await conn.execute(text("DELETE FROM outbox WHERE aggregatetype = 'contract'"))
    await engine.dispose()


def _key() -> tuple[str, int]:
    key = f"contract-{uuid7().hex}"
    return key, partition_for(key, Settings().outbox_partitions)


async def _mine(store: OutboxStore, partition: int, key: str, **kw: int) -> list[int]:
    fetched = await store.fetch(partition, 10_000, **kw)
    return [
        json.loads(r.message.payload)["n"] for r in fetched.rows if r.message.aggregateid == key
    ]


async def test_fetch_is_in_sequence_order_and_holds_back_behind_a_failed_row(
    subject: Subject,
) -> None:
    key, partition = _key()
    await subject.add(key, [{"n": n} for n in range(5)])
    assert await _mine(subject.store, partition, key) == [0, 1, 2, 3, 4]
    lease = await subject.locks.try_acquire(f"contract-{uuid7()}", 30)
    assert lease is not None
    rows = (await subject.store.fetch(partition, 10_000)).rows
    first = next(r for r in rows if r.message.aggregateid == key)
    assert await subject.store.settle(lease, [], [(first.message.id, "refused")]) == 0
    assert await _mine(subject.store, partition, key) == []  # the key waits


async def test_fetch_keeps_to_the_byte_budget(subject: Subject) -> None:
    key, partition = _key()
    await subject.add(key, [{"n": n, "pad": "x" * 2000} for n in range(3)])
    # A budget smaller than one payload still yields the first due row of the partition.
    rows = (await subject.store.fetch(partition, 10_000, max_bytes=1)).rows
    assert len(rows) == 1


async def test_settle_with_a_stale_lease_changes_nothing(subject: Subject) -> None:
    key, partition = _key()
    await subject.add(key, [{"n": 1}])
    name = f"contract-{uuid7()}"
    lease = await subject.locks.try_acquire(name, 30)
    assert lease is not None
    assert await subject.locks.release(lease)
    rows = (await subject.store.fetch(partition, 10_000)).rows
    mine = [r.message.id for r in rows if r.message.aggregateid == key]
    assert await subject.store.settle(lease, mine, []) is None
    assert await _mine(subject.store, partition, key) == [1]
