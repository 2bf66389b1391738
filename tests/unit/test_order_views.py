"""The orders API's read path (front cache → read model → database) against its
stated guarantee, with hypothesis schedules: whatever the interleaving of status
changes, their delivery to this process, a read model that lags, and reads (also
racing a delivery while the database is read), a served view is never older than an
event this process has seen for that order, nor than the client's ``min_version``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from relaybus.shop.producers.orders.views import OrderViews
from relaybus.streams.cache import LFUCache, LRUCache

ORDERS = (1, 2)


@dataclass
class World:
    """The database (current version per order), the ``order.status`` log of one
    partition, how far the API's tail and the read model have read it."""

    versions: dict[int, int] = field(default_factory=lambda: dict.fromkeys(ORDERS, 0))
    log: list[tuple[int, int]] = field(default_factory=list)  # (order, version)
    delivered: int = 0
    applied: int = 0
    seen: dict[int, int] = field(default_factory=lambda: dict.fromkeys(ORDERS, 0))

    def change(self, order: int) -> None:
        self.versions[order] += 1
        self.log.append((order, self.versions[order]))

    def deliver(self, views: OrderViews) -> None:
        if self.delivered < len(self.log):
            order, version = self.log[self.delivered]
            views.invalidate(0, self.delivered, order, version)
            self.seen[order] = max(self.seen[order], version)
            self.delivered += 1

    def view(self, order: int, version: int) -> dict[str, Any]:
        return {"id": str(order), "status": f"S{version}", "version": version}


Step = tuple[str, int]
steps = st.lists(
    st.tuples(
        st.sampled_from(["change", "deliver", "apply", "get", "get-racing", "get-pinned"]),
        st.sampled_from(ORDERS),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(schedule=steps, policy=st.sampled_from(["lru", "lfu", "none"]))
def test_a_served_view_is_never_older_than_a_seen_event_or_min_version(
    schedule: list[Step], policy: str
) -> None:
    world = World()
    racing = {"on": False}
    views: OrderViews

    async def read_model(order: int) -> tuple[dict[str, Any] | None, dict[int, int]]:
        # The read model has applied the first ``applied`` events.
        version = max((v for o, v in world.log[: world.applied] if o == order), default=0)
        return world.view(order, version), {0: world.applied - 1}

    async def database(order: int) -> dict[str, Any] | None:
        view = world.view(order, world.versions[order])
        if racing["on"]:  # a change committed and delivered while we read
            world.change(order)
            world.deliver(views)
        return view

    cache = {"lru": LRUCache[int, Any](8), "lfu": LFUCache[int, Any](8), "none": None}[policy]
    views = OrderViews(cache, read_model, database, lambda order: 0)

    async def run() -> None:
        pinned = dict.fromkeys(ORDERS, 0)  # what a client last saw, per order
        for action, order in schedule:
            if action == "change":
                world.change(order)
            elif action == "deliver":
                world.deliver(views)
            elif action == "apply":
                world.applied = min(world.applied + 1, len(world.log))
            else:
                racing["on"] = action == "get-racing"
                floor = pinned[order] if action == "get-pinned" else 0
                seen_before = world.seen[order]
                view, _ = await views.get(order, floor)
                racing["on"] = False
                assert view is not None
                assert view["version"] >= seen_before
                assert view["version"] >= floor
                pinned[order] = max(pinned[order], view["version"])
                # And the cache holds nothing older than what was seen since.
                if cache is not None:
                    held = cache.peek(order)
                    assert held is None or held["version"] >= world.seen[order]

    asyncio.run(run())


def test_sources_are_counted_and_an_unknown_order_is_none() -> None:
    async def read_model(order: int) -> tuple[dict[str, Any] | None, dict[int, int]]:
        return None, {}

    async def database(order: int) -> dict[str, Any] | None:
        return {"id": str(order), "version": 0} if order == 1 else None

    views = OrderViews(LRUCache[int, Any](4), read_model, database, lambda order: 0)

    async def run() -> None:
        assert (await views.get(2))[0] is None
        assert (await views.get(1))[1] == "database"
        assert (await views.get(1))[1] == "cache"
        views.on_record(0, 5, b"1", b'{"order_id": 1, "version": 1}')
        assert (await views.get(1))[1] == "database"  # evicted by the newer version
        views.on_record(0, 6, b"x", b"\xff not json")  # unreadable: advances, evicts nothing
        assert views.seen[0] == 6

    asyncio.run(run())
    assert views.served == {"cache": 1, "read-model": 0, "database": 3}


def test_a_database_read_that_began_before_the_tail_started_is_not_cached() -> None:
    """Found by CI: a read that started while the cache was still off came back
    after the tail had started past the event that made it stale; cached, it was
    served forever (no event left to evict it)."""
    release = asyncio.Event()
    rows = {1: {"id": "1", "version": 0}}

    async def database(order: int) -> dict[str, Any] | None:
        view = dict(rows[order])
        await release.wait()
        return view

    views = OrderViews(None, None, database, lambda order: 0)

    async def run() -> None:
        early = asyncio.create_task(views.get(1))
        await asyncio.sleep(0)  # the read has begun (cache off), and waits
        rows[1] = {"id": "1", "version": 1}  # the order moves on; its event is published
        views.follow(LRUCache[int, Any](4), None, {0: 7})  # the tail starts past it
        release.set()
        assert (await early)[0] == {"id": "1", "version": 0}  # answered, not kept
        assert views.cache is not None
        assert views.cache.peek(1) is None
        assert views.seen == {0: 7}
        got, source = await views.get(1)  # a read after the start sees the new version
        assert (source, got) == ("database", {"id": "1", "version": 1})

    asyncio.run(run())
