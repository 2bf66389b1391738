"""Serving order views: an in-process front cache over the read model, the database
behind both, and invalidation by the ``order.status`` stream."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import httpx

from relaybus.consumers.incoming import parse_payload

log = logging.getLogger("relaybus.orders_api")

View = dict[str, Any]
# order id -> (view or None, {partition: last applied offset}); None if unreachable.
ReadModel = Callable[[int], Awaitable[tuple[View | None, dict[int, int]] | None]]
Database = Callable[[int], Awaitable[View | None]]


class ViewCache(Protocol):
    """What the front cache needs of a ``relaybus.streams.cache`` policy."""

    def get(self, key: int) -> View | None: ...
    def put(self, key: int, value: View) -> int | None: ...
    def pop(self, key: int) -> View | None: ...
    def peek(self, key: int) -> View | None: ...


class OrderViews:
    """``GET /orders/{id}``'s read path: cache → read model → database.

    Guarantee, precisely: a view this process serves is never older than an
    ``order.status`` event this process has seen for that order (``seen``: the last
    offset its tail delivered per partition; at start, the end of the topic). And
    for a client passing ``min_version`` (the version it last saw, e.g. 0 from
    ``POST``), the view's version is at least that: read-your-writes and monotonic
    reads for that client, from any API process.

    How: an event at version v evicts a cached view older than v. A read-model answer
    is used (and cached) only if the read model has applied the key's partition at
    least up to ``seen`` for that partition; otherwise the database answers (it is
    the source of the events, so never behind them). A database answer is cached
    only if no event of that partition arrived while it was read. Anything below
    ``min_version`` goes to the database. The database is the last word: with the
    read model or Kafka down, answers are still correct, only slower.
    """

    def __init__(
        self,
        cache: ViewCache | None,
        read_model: ReadModel | None,
        database: Database,
        partition_of: Callable[[int], int],
    ) -> None:
        self.cache = cache
        self.read_model = read_model
        self.database = database
        self.partition_of = partition_of
        self.seen: dict[int, int] = {}
        self.served: dict[str, int] = {"cache": 0, "read-model": 0, "database": 0}

    def invalidate(self, partition: int, offset: int, order_id: int, version: int) -> None:
        """An ``order.status`` event (partition, offset) says ``order_id`` reached
        ``version``: a cached view older than that is dropped."""
        self.seen[partition] = max(offset, self.seen.get(partition, -1))
        if self.cache is None:
            return
        cached = self.cache.peek(order_id)
        if cached is not None and int(cached.get("version", -1)) < version:
            self.cache.pop(order_id)

    def on_record(
        self, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> None:
        """A ``KafkaTail`` callback: read the event's order and version, bounded; a
        record that is not one still advances ``seen`` (and invalidates nothing)."""
        order_id, version = -1, -1
        if value is not None and len(value) <= 65_536:
            try:
                payload = parse_payload(value, require_object=True)
                order_id = int(payload["order_id"])
                version = int(payload["version"])
            except Exception as err:
                # Any error reading one record is that record's fault (not JSON, no
                # field, a number int() refuses): logged with its position and
                # skipped; the tail goes on.
                order_id, version = -1, -1
                log.warning(
                    "orders: an order.status record at %d/%d is unreadable: %.300s",
                    partition,
                    offset,
                    err,
                )
        self.invalidate(partition, offset, order_id, version)

    def follow(
        self, cache: ViewCache | None, read_model: ReadModel | None, start: dict[int, int]
    ) -> None:
        """The tail runs from ``start`` (partition -> last offset already in the
        topic): from now on the cache and the read model may serve. ``seen`` starts
        there, so a read-model answer must have applied at least what was in the
        topic when the tail started."""
        self.seen = dict(start)
        self.cache = cache
        self.read_model = read_model

    async def get(self, order_id: int, min_version: int = 0) -> tuple[View | None, str]:
        """The order's view and where it came from (``cache``, ``read-model``,
        ``database``); None if no such order."""
        # The cache as it was when this read began: a database read that started
        # before ``follow`` enabled the cache may predate the tail's first event, and
        # the tail would never evict it; it is not cached.
        cache = self.cache
        if cache is not None:
            cached = cache.get(order_id)
            if cached is not None and int(cached["version"]) >= min_version:
                return self._served(cached, "cache")
        partition = self.partition_of(order_id)
        if self.read_model is not None:
            answer = await self.read_model(order_id)
            if answer is not None:
                view, applied = answer
                fresh = applied.get(partition, -1) >= self.seen.get(partition, -1)
                if view is not None and fresh and int(view["version"]) >= min_version:
                    self._keep(cache, order_id, view)
                    return self._served(view, "read-model")
        before = self.seen.get(partition, -1)
        view = await self.database(order_id)
        if view is not None and self.seen.get(partition, -1) == before:
            self._keep(cache, order_id, view)
        return self._served(view, "database")

    @staticmethod
    def _keep(cache: ViewCache | None, order_id: int, view: View) -> None:
        if cache is None:
            return
        cached = cache.peek(order_id)
        if cached is None or int(cached["version"]) <= int(view["version"]):
            cache.put(order_id, view)

    def _served(self, view: View | None, source: str) -> tuple[View | None, str]:
        self.served[source] += 1
        return view, source


class HttpReadModel:
    """The read model's HTTP endpoint as a ``ReadModel``: None when it cannot answer
    within ``timeout`` (logged at most every 30 s: the database answers instead)."""

    def __init__(self, base_url: str, timeout: float) -> None:
        self.client = httpx.AsyncClient(base_url=base_url, timeout=timeout)
        self._warned = 0.0

    async def __call__(self, order_id: int) -> tuple[View | None, dict[int, int]] | None:
        try:
            response = await self.client.get(f"/orders/{order_id}/")
            response.raise_for_status()
            body = response.json()
            applied = {int(p): int(o) for p, o in body["applied"].items()}
            view = body["view"]
            if view is not None and not isinstance(view, dict):
                raise TypeError("view is not an object")
            return view, applied
        except (httpx.HTTPError, KeyError, TypeError, ValueError, AttributeError) as err:
            if time.monotonic() - self._warned > 30:
                self._warned = time.monotonic()
                log.warning("orders: read model unavailable (%r); reading the database", err)
            return None

    async def aclose(self) -> None:
        await self.client.aclose()
