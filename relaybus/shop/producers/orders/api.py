"""The orders HTTP API (FastAPI): ``POST /orders``, ``GET /orders/{id}``, ``/healthz``.

``relaybus serve orders-api`` runs it with uvicorn. Bad input is a 4xx whose body
names the problem (FastAPI/pydantic's ``detail`` with the field's location); a body
over ``RELAYBUS_ORDERS_API_MAX_BODY_BYTES`` is a 413 before it is read in full; an
unexpected error is a plain 500 with no traceback (it is logged).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from relaybus.brokers.kafka import key_partition
from relaybus.brokers.kafka_admin import ensure_topic
from relaybus.client_address import limit_key
from relaybus.consumers.tail import KafkaTail, TailUnavailable
from relaybus.db import create_engine, session_factory
from relaybus.locks.postgres import PostgresLock
from relaybus.outbox.writer import Outbox
from relaybus.settings import Settings
from relaybus.shop.contract import ORDER_STATUS_EVENTS, Line
from relaybus.shop.producers.orders.auth import RequireApiKey, caller_of
from relaybus.shop.producers.orders.credentials import ApiKeys
from relaybus.shop.producers.orders.limits import BodyLimit
from relaybus.shop.producers.orders.store import (
    KeyReused,
    OrderStore,
    UnknownProducts,
    read_backlog,
)
from relaybus.shop.producers.orders.views import HttpReadModel, OrderViews, ViewCache
from relaybus.shop.settings import ShopSettings
from relaybus.snowflake import WorkerIdLease
from relaybus.streams.cache import FIFOCache, LFUCache, LRUCache
from relaybus.streams.shedding import BacklogGate, Shed
from relaybus.tracing import tracer
from relaybus.tracing.asgi import TraceRequests

log = logging.getLogger("relaybus.orders_api")
_PING = text("SELECT 1")

MAX_ID = (1 << 63) - 1
CONTROL_POOL = 4  # connections for API-key checks and backlog readings


class OrderRequest(BaseModel):
    """``POST /orders`` body. Strict types: ``"2"`` is not a quantity."""

    model_config = ConfigDict(extra="forbid", strict=True)

    # Who orders comes from the API key; a client may still name its customer (it
    # must then be the key's own: a mismatch is a 403, never an order for another).
    customer: str | None = Field(None, min_length=1, max_length=128)
    items: list[Line] = Field(min_length=1, max_length=20)

    @field_validator("items")
    @classmethod
    def _one_line_per_product(cls, items: list[Line]) -> list[Line]:
        seen: set[str] = set()
        for line in items:
            if line.product in seen:
                raise ValueError(f"product {line.product!r} appears twice; give one line each")
            seen.add(line.product)
        return items


class OrderAccepted(BaseModel):
    """The 202 answer: the order's id (a string: snowflake ids exceed 2^53), its status
    (REQUESTED) and version (0): pass ``min_version`` to ``GET`` to read your write."""

    id: str
    status: str
    version: int


def _valid_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not key.isascii() or not key.isprintable():
        raise HTTPException(
            400, "Idempotency-Key must be 1..255 printable ASCII characters (e.g. a UUID)"
        )
    return key


class OrdersService:
    """What a running API holds: engine, sessions, the id generator, the store."""

    def __init__(
        self, settings: Settings, shop: ShopSettings, store: OrderStore | None = None
    ) -> None:
        self.settings = settings
        self.shop = shop
        self.engine: AsyncEngine = create_engine(
            settings.database_url, pool_size=shop.orders_api_workers_pool
        )
        self.sessions: async_sessionmaker[AsyncSession] = session_factory(self.engine)
        # The reads that decide about a request (who is calling, how loaded the shop
        # is) have connections of their own: under overload they must not queue behind
        # the order writes they are there to turn away (measured: 429s answered after
        # seconds while the write pool was busy; bench/shop_bench.py).
        self.control = create_engine(settings.database_url, pool_size=CONTROL_POOL)
        self.control_sessions = session_factory(self.control)
        self.store = store or OrderStore(Outbox.from_settings(settings))
        self.ids = WorkerIdLease(PostgresLock(self.engine))
        self.tail = KafkaTail(settings.kafka, ORDER_STATUS_EVENTS)
        self.read_model = HttpReadModel(shop.read_model_base_url, shop.read_model_timeout)
        self.api_keys = ApiKeys(self.control, shop.orders_api_key_cache_seconds)
        self.views = OrderViews(None, None, self.from_database, self.partition_of)
        self.gate = make_gate(shop)

    async def from_database(self, order_id: int) -> dict[str, Any] | None:
        async with self.sessions() as session:
            return await self.store.get(session, order_id)

    def partition_of(self, order_id: int) -> int:
        return key_partition(str(order_id).encode(), max(self.tail.partitions, 1))

    async def follow_statuses(self, stop: asyncio.Event) -> None:
        """Tail ``order.status``; only once the tail runs do the read model and the
        front cache serve (without invalidation they could serve a stale view). If
        Kafka cannot be reached at start, the database answers every read."""
        try:
            await ensure_topic(
                self.settings.kafka,
                ORDER_STATUS_EVENTS,
                self.shop.shop_partitions,
                self.shop.shop_replication,
            )
            await self.tail.start()
        except (OSError, TailUnavailable) as err:
            log.warning(
                "orders: cannot tail %s (%r); reads go to the database", ORDER_STATUS_EVENTS, err
            )
            return
        self.views.follow(make_cache(self.shop), self.read_model, self.tail.position)
        await self.tail.run(stop, self.views.on_record)

    async def watch_backlog(self, stop: asyncio.Event) -> None:
        """Feed the load-shedding gate a reading of the backlog every
        ``orders_backlog_poll`` seconds (one query; a failed reading is logged and the
        gate keeps deciding on the last one)."""
        if self.gate is None:
            return
        since: int | None = None
        while not stop.is_set():
            try:
                counted = self.gate.admitted  # what the reading will include
                async with self.control_sessions() as session:
                    in_flight, arrived, newest = await read_backlog(
                        session, since or 0, self.shop.saga_deadline
                    )
                # The first reading only sets where "arrived" counts from.
                self.gate.observe(time.monotonic(), in_flight, arrived if since else 0, counted)
                since = newest
            except Exception:  # the next reading may succeed; requests are still decided
                log.exception("orders: reading the backlog failed")
            try:
                await asyncio.wait_for(stop.wait(), self.shop.orders_backlog_poll)
            except TimeoutError:
                continue

    async def keep_keys(self, stop: asyncio.Event) -> None:
        """Load every live API key at start and every half of
        ``orders_api_key_cache_seconds`` (``ApiKeys.refresh``); a failed load is logged
        and the keys known stay (each unknown one costs a lookup, as without it)."""
        period = self.shop.orders_api_key_cache_seconds / 2
        if period <= 0:
            return  # every request asks the database: nothing to keep
        while not stop.is_set():
            try:
                await self.api_keys.refresh()
            except Exception:  # the next load may succeed; requests are still served
                log.exception("orders: loading the API keys failed")
            try:
                await asyncio.wait_for(stop.wait(), max(period, 1.0))
            except TimeoutError:
                continue

    async def sweep(self, stop: asyncio.Event) -> None:
        """Every ``saga_sweep_interval``: announce orders past the saga deadline and
        forget Idempotency-Keys past their retention."""
        while not stop.is_set():
            try:
                async with self.sessions() as session, session.begin():
                    expired = await self.store.expire_overdue(session, self.shop.saga_deadline)
                if expired:
                    log.warning("orders: %d orders passed the saga deadline", expired)
                async with self.sessions() as session, session.begin():
                    await self.store.purge_idempotency_keys(
                        session, self.shop.orders_idempotency_retention
                    )
            except Exception:  # the sweep is retried next interval; the API goes on
                log.exception("orders: deadline sweep failed")
            try:
                await asyncio.wait_for(stop.wait(), self.shop.saga_sweep_interval)
            except TimeoutError:
                continue


def make_gate(shop: ShopSettings) -> BacklogGate | None:
    """The load-shedding gate the settings ask for (None: ``orders_backlog_seconds`` 0)."""
    if shop.orders_backlog_seconds == 0:
        return None
    return BacklogGate(
        shop.orders_backlog_seconds,
        shop.orders_backlog_floor,
        shop.orders_backlog_vip_headroom,
        shop.orders_backlog_queue,
    )


def shed_answer(shed: Shed) -> JSONResponse:
    """429 with ``Retry-After`` (whole seconds) and the reason: nothing was written."""
    return JSONResponse(
        {"detail": shed.reason, "status": "REJECTED", "reason": shed.reason},
        status_code=429,
        headers={"Retry-After": str(math.ceil(shed.retry_after))},
    )


def make_cache(shop: ShopSettings) -> ViewCache | None:
    """The front cache the settings ask for (None when its size is 0)."""
    if shop.orders_cache_size == 0:
        return None
    size = shop.orders_cache_size
    if shop.orders_cache_policy == "lfu":
        return LFUCache[int, dict[str, Any]](size)
    if shop.orders_cache_policy == "fifo":
        return FIFOCache[int, dict[str, Any]](size)
    return LRUCache[int, dict[str, Any]](size)


def create_app(settings: Settings, shop: ShopSettings, store: OrderStore | None = None) -> FastAPI:
    """The orders API; its engine, id lease and deadline sweeper live with the app.
    ``store`` replaces the SQL layer (the API benchmark's no-event baseline)."""
    service = OrdersService(settings, shop, store)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.ids.acquire()
        stop = asyncio.Event()
        sweeper = asyncio.create_task(service.sweep(stop))
        follower = asyncio.create_task(service.follow_statuses(stop))
        watcher = asyncio.create_task(service.watch_backlog(stop))
        keeper = asyncio.create_task(service.keep_keys(stop))
        try:
            yield
        finally:
            stop.set()
            await sweeper
            await follower
            await watcher
            await keeper
            await service.read_model.aclose()
            await service.ids.release()
            await service.engine.dispose()
            await service.control.dispose()

    app = FastAPI(
        title="relaybus flash-sale orders",
        version="1",
        lifespan=lifespan,
        description="Orders are accepted (202) and finish CONFIRMED or CANCELLED by the saga.",
    )
    app.add_middleware(BodyLimit, max_bytes=shop.orders_api_max_body_bytes)
    # Outermost: a request without a valid key is answered 401 before anything else.
    app.add_middleware(RequireApiKey, keys=service.api_keys, paths=("/orders",))
    # Outermost of all: the request's span covers the refusals too.
    app.add_middleware(TraceRequests, trust_client_context=settings.tracing_trust_client_context)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        log.exception("orders: %s %s failed", request.method, request.url.path)
        return JSONResponse({"detail": "internal error; it was logged"}, status_code=500)

    @app.post("/orders", status_code=202, response_model=OrderAccepted)
    async def place_order(
        body: OrderRequest,
        request: Request,
        idempotency_key: Annotated[str | None, Header()] = None,
    ) -> Any:
        """Accept an order request: it is written REQUESTED with ``order.requested`` in
        one transaction; the admission processor then admits it (it becomes PENDING and
        the saga runs) or rejects it (REJECTED, with the limit that refused it).

        Authenticated: ``Authorization: Bearer <API key>`` (401 without a valid one).
        The customer and its VIP flag are the key's; a ``customer`` in the body must be
        the key's own (403 otherwise).

        With an ``Idempotency-Key`` header, a retried request gets the first answer
        and never makes a second order; the same key with another body is a 422.
        Keys are per customer and forgotten after ``RELAYBUS_ORDERS_IDEMPOTENCY_RETENTION``.

        Overloaded (more unfinished orders than the shop finishes in
        ``RELAYBUS_ORDERS_BACKLOG_SECONDS``; VIPs shed last), the answer is an
        immediate 429 with ``Retry-After`` and the reason, and nothing is written:
        send the same request again (same ``Idempotency-Key``) after that many seconds.
        The client address limited per IP is the connection's peer (``X-Forwarded-For``
        only from ``RELAYBUS_TRUSTED_PROXIES``), IPv6 by its /64.
        """
        caller = caller_of(request)
        if body.customer is not None and body.customer != caller.customer:
            raise HTTPException(
                403,
                [{"loc": ["body", "customer"], "msg": "this API key orders for another "
                  "customer; leave 'customer' out (it comes from the key)"}],
            )  # fmt: skip
        key = _valid_key(idempotency_key)
        if service.gate is not None:
            decided = service.gate.decide(time.monotonic(), caller.vip)
            if isinstance(decided, Shed):
                tracer().current().set("relaybus.shed", decided.reason)
                return shed_answer(decided)
            if decided.wait:
                await asyncio.sleep(decided.wait)  # queued: released at the finish rate
        order_id = service.ids.next_id()
        try:
            async with service.sessions() as session, session.begin():
                accepted = await service.store.place(
                    session,
                    order_id,
                    caller.customer,
                    body.items,
                    key,
                    limit_key(request.client.host if request.client else None),
                    vip=caller.vip,
                )
        except UnknownProducts as err:
            raise HTTPException(
                422,
                [
                    {"loc": ["body", "items", "product"], "msg": f"unknown product {p!r}"}
                    for p in err.products
                ],
            ) from None
        except KeyReused as err:
            raise HTTPException(
                422, [{"loc": ["header", "Idempotency-Key"], "msg": str(err)}]
            ) from None
        tracer().current().set("relaybus.order.id", str(accepted.order_id))
        headers = {"Idempotent-Replayed": "true"} if accepted.replayed else {}
        return JSONResponse(
            {"id": str(accepted.order_id), "status": "REQUESTED", "version": 0},
            status_code=202,
            headers=headers,
        )

    @app.get("/orders/{order_id}")
    async def get_order(
        request: Request,
        order_id: Annotated[int, Path(gt=0, le=MAX_ID)],
        min_version: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    ) -> Any:
        """The order's status and the history of its transitions, with reasons, and
        its ``version``. Served from the front cache, the order-status read model or
        the database (header ``X-Served-By``), never older than a status event this
        process has seen; pass the ``version`` you last saw as ``min_version`` to
        never go back in time (read-your-writes). Only the order's own customer sees
        it: anyone else gets the same 404 as for an order that does not exist
        (snowflake ids are guessable)."""
        caller = caller_of(request)
        order, source = await service.views.get(order_id, min_version)
        if order is None or order.get("customer") != caller.customer:
            raise HTTPException(404, f"no order {order_id}")
        return JSONResponse(order, headers={"X-Served-By": source})

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """200 once the database answers; with load shedding on, the backlog the API
        last read (unfinished orders, the limit, the finish rate per second)."""
        async with service.sessions() as session:
            await session.execute(_PING)
        if service.gate is None:
            return {"status": "ok"}
        gate = service.gate
        return {
            "status": "ok",
            "backlog": {
                "in_flight": gate.in_flight,
                "limit": gate.limit,
                "finished_per_second": None if gate.rate is None else round(gate.rate, 2),
            },
        }

    return app
