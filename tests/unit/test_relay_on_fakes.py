"""The relay on in-memory fakes (store, lock, publisher): drain order, per-key deferral,
rows it cannot publish, broker outages and store errors, without any service. The same
behaviours run on PostgreSQL, Kafka and RabbitMQ in tests/integration."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from relaybus.brokers.memory import InMemoryPublisher
from relaybus.locks.memory import InMemoryLock
from relaybus.message import Message
from relaybus.outbox.memory import InMemoryOutboxStore
from relaybus.outbox.metrics import RelayMetrics
from relaybus.outbox.relay import Relay, RelayConfig
from relaybus.outbox.routing import Router
from relaybus.outbox.store import Backlog, Fetched
from relaybus.settings import Route
from tests.support.poll import eventually

CONFIG = RelayConfig(partitions=4, batch_size=50, lease_ttl=2.0, poll_interval=0.02)


def message(key: str, n: int, type_: str = "order.created") -> Message:
    return Message.from_data(type_, "order", key, {"n": n})


@asynccontextmanager
async def relay_on(
    store: InMemoryOutboxStore, publisher: InMemoryPublisher, locks: InMemoryLock
) -> AsyncIterator[Relay]:
    relay = Relay(
        store,
        locks,
        {"kafka": publisher},
        Router([Route(pattern="*", brokers=["kafka"])]),
        CONFIG,
        RelayMetrics(),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        yield relay
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def fakes(
    refuse: Callable[[Message], str | None] | None = None,
) -> tuple[InMemoryOutboxStore, InMemoryPublisher, InMemoryLock]:
    locks = InMemoryLock()
    store = InMemoryOutboxStore(locks, CONFIG.partitions)
    return store, InMemoryPublisher("kafka", refuse), locks


async def test_drains_everything_in_per_key_order() -> None:
    store, publisher, locks = fakes()
    for n in range(30):
        store.add(message(f"k{n % 5}", n))
    async with relay_on(store, publisher, locks):

        async def drained() -> bool:
            return not store.rows

        await eventually(drained, within=10, what="outbox drained")
    per_key: dict[str, list[int]] = {}
    for m in publisher.sent:
        per_key.setdefault(m.aggregateid, []).append(json.loads(m.payload)["n"])
    assert all(ns == sorted(ns) for ns in per_key.values())
    assert sorted(n for ns in per_key.values() for n in ns) == list(range(30))
    assert len(store.archived) == 30


async def test_refused_row_fails_and_holds_back_its_key_only() -> None:
    store, publisher, locks = fakes(
        lambda m: "too large" if json.loads(m.payload)["n"] == 1 else None
    )
    for n in range(4):
        store.add(message("held", n))
    store.add(message("free", 9))
    async with relay_on(store, publisher, locks):

        async def settled() -> bool:
            return sorted(json.loads(m.payload)["n"] for m in publisher.sent) == [0, 9]

        await eventually(settled, within=10, what="key 'held' stops at its failed row")
        failed = [r for r in store.rows if r.status == "failed"]
        assert [json.loads(r.message.payload)["n"] for r in failed] == [1]
        assert failed[0].last_error == "too large"
        assert [r.status for r in store.rows if r.message.aggregateid == "held"] == [
            "failed",
            "pending",
            "pending",
        ]


async def test_row_written_around_the_outbox_is_failed_and_the_partition_moves_on() -> None:
    store, publisher, locks = fakes()
    bad = store.add(message("k", 1), headers={"retries": 3})  # psql-style: not text
    reserved = store.add(message("j", 1), headers={"x-attempts": "9"})
    spaced = store.add(Message.from_data("t", "has space", "m", {"n": 1}))
    store.add(message("other", 2))
    async with relay_on(store, publisher, locks):

        async def settled() -> bool:
            return len(publisher.sent) == 1 and all(
                r.status == "failed" for r in (bad, reserved, spaced)
            )

        await eventually(settled, within=10, what="bad rows failed, good row published")
    assert "strings" in (bad.last_error or "")
    assert "reserved" in (reserved.last_error or "")
    assert "Kafka topic" in (spaced.last_error or "")


async def test_broker_outage_backs_off_then_drains() -> None:
    store, publisher, locks = fakes()
    publisher.down = True
    for n in range(5):
        store.add(message("k", n))
    async with relay_on(store, publisher, locks):

        async def attempted() -> bool:
            return all(r.attempts >= 1 for r in store.rows)

        await eventually(attempted, within=10, what="failed attempts noted")
        assert all(r.status == "pending" for r in store.rows)
        publisher.down = False

        async def drained() -> bool:
            return not store.rows

        await eventually(drained, within=20, what="drained after the outage")
    assert [json.loads(m.payload)["n"] for m in publisher.sent] == list(range(5))


class FlakyStore(InMemoryOutboxStore):
    """Fails its first fetches like a database hiccup would."""

    failures = 3

    async def fetch(
        self, partition: int, limit: int, max_bytes: int = 2**62, skip_keys: Sequence[str] = ()
    ) -> Fetched:
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("database went away")
        return await super().fetch(partition, limit, max_bytes, skip_keys)


async def test_a_drainer_survives_store_errors() -> None:
    locks = InMemoryLock()
    store = FlakyStore(locks, CONFIG.partitions)
    publisher = InMemoryPublisher("kafka")
    for n in range(10):
        store.add(message(f"k{n}", n))
    async with relay_on(store, publisher, locks) as relay:

        async def drained() -> bool:
            return not store.rows

        await eventually(drained, within=20, what="drained despite fetch errors")
        assert len(relay.held_partitions()) == CONFIG.partitions


async def test_fetch_keeps_to_the_byte_budget_but_always_takes_one_row() -> None:
    store, _, _ = fakes()
    for n in range(10):
        store.add(Message.from_data("t", "order", "k", {"pad": "x" * 100, "n": n}))
    partition = store.rows[0].partition
    assert len((await store.fetch(partition, 100, max_bytes=250)).rows) == 2
    assert len((await store.fetch(partition, 100, max_bytes=1)).rows) == 1


async def test_a_notify_wakes_only_its_partitions_drainer() -> None:
    store, publisher, locks = fakes()
    async with relay_on(store, publisher, locks) as relay:

        async def all_held() -> bool:
            return len(relay._drainers) == CONFIG.partitions

        await eventually(all_held, within=10, what="every partition leased")
        events = {p: relay._drainers[p][0].wake for p in relay._drainers}

        def woken() -> set[int]:
            return {p for p, event in events.items() if event.is_set()}

        for event in events.values():
            event.clear()
        relay.wake("2")
        assert woken() == {2}
        for event in events.values():
            event.clear()
        relay.wake("99")  # a partition this relay does not hold: nobody
        assert woken() == set()
        relay.wake("")  # after a reconnect: any partition may have rows
        assert woken() == set(range(CONFIG.partitions))
        for event in events.values():
            event.clear()
        relay.wake("<junk>")  # not a partition: treated as "any"
        assert woken() == set(range(CONFIG.partitions))


async def test_a_notify_during_an_empty_fetch_is_not_lost() -> None:
    """A row committed too late for a fetch's snapshot, whose NOTIFY lands while that
    fetch runs, is published at once, not after the poll interval (a lost wake-up)."""
    locks, publisher = InMemoryLock(), InMemoryPublisher("kafka")
    store = InMemoryOutboxStore(locks, partitions=1)
    slow_poll = RelayConfig(partitions=1, batch_size=50, lease_ttl=2.0, poll_interval=60.0)
    relay = Relay(
        store, locks, {"kafka": publisher}, Router([Route(pattern="*", brokers=["kafka"])]),
        slow_poll, RelayMetrics(),
    )  # fmt: skip
    fetch = store.fetch
    racing = {"armed": False}

    async def fetch_racing_a_commit(
        partition: int, limit: int, max_bytes: int = 2**62, skip_keys: Sequence[str] = ()
    ) -> Any:
        fetched = await fetch(partition, limit, max_bytes, skip_keys)
        if racing["armed"]:  # the snapshot was taken; now a writer commits and NOTIFYs
            racing["armed"] = False
            store.add(message("late", 1))
            relay.wake(str(partition))
        return fetched

    store.fetch = fetch_racing_a_commit  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:

        async def idle() -> bool:
            return bool(relay._drainers) and relay._drainers[0][0].idle

        await eventually(idle, within=10, what="the drainer idle")
        racing["armed"] = True
        relay.wake("0")  # something to fetch for: the fetch that races the commit

        async def published() -> bool:
            return [m.aggregateid for m in publisher.sent] == ["late"]

        await eventually(published, within=10, what="the late row published")  # poll: 60 s
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_the_backlog_is_counted_once_per_backlog_interval_not_every_tick() -> None:
    """Counting the backlog reads every row of the outbox: the coordinator does it once
    per ``backlog_interval``, however often it ticks to extend leases."""

    class CountingLock(InMemoryLock):
        ticks = 0

        async def held_count(self, prefix: str) -> int:
            CountingLock.ticks += 1  # once per coordination tick
            return await super().held_count(prefix)

    class CountingStore(InMemoryOutboxStore):
        counts = 0

        async def backlog(self) -> Backlog:
            CountingStore.counts += 1
            return await super().backlog()

    locks = CountingLock()
    store = CountingStore(locks, 2)
    config = RelayConfig(partitions=2, lease_ttl=0.15, poll_interval=0.02, backlog_interval=60)
    relay = Relay(
        store,
        locks,
        {"kafka": InMemoryPublisher("kafka")},
        Router([Route(pattern="*", brokers=["kafka"])]),
        config,
        RelayMetrics(),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))

    async def ticked() -> bool:
        return CountingLock.ticks >= 10

    try:
        await eventually(ticked, within=10, what="ten coordination ticks")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert CountingStore.counts == 1


async def test_a_stalled_destination_holds_back_only_its_keys_and_is_reported() -> None:
    store, publisher, locks = fakes()
    publisher.freeze("stuck")
    for n in range(3):
        store.add(message("stuck", n))
    async with relay_on(store, publisher, locks):
        for n in range(200):  # other keys keep coming while "stuck" stalls
            store.add(message(f"free{n % 7}", n))

        async def others_drained() -> bool:
            return all(r.message.aggregateid == "stuck" for r in store.rows)

        await eventually(others_drained, within=10, what="the other keys published")
        assert len(publisher.sent) == 200
        assert [r.status for r in store.rows] == ["pending"] * 3

        async def reported() -> bool:
            stalls = store.stalls.get(CONFIG.instance, [])
            return [s.destination for s in stalls] == ["stuck"]

        await eventually(reported, within=10, what="the stall recorded for operators")
        # Held back between rechecks, not retried in a loop.
        calls = publisher.deferred_calls
        assert calls < 40, f"{calls} publish calls for a stalled key"
        publisher.thaw("stuck")

        async def drained() -> bool:
            return not store.rows and store.stalls.get(CONFIG.instance) == []

        await eventually(drained, within=10, what="the stalled key published, stall cleared")
    stuck = [json.loads(m.payload)["n"] for m in publisher.sent if m.aggregateid == "stuck"]
    assert stuck == [0, 1, 2]
