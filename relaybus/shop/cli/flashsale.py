"""The flash-sale workload: seed products, place orders over HTTP, wait for every saga.

Used by ``relaybus demo`` and by the shop's end-to-end tests (which add faults while
it runs). Only the orders API's public HTTP interface is used to place orders.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.db import session_factory
from relaybus.shop.producers.inventory.stock import add_stock
from relaybus.shop.producers.orders.credentials import issue_keys as issue_keys_for
from relaybus.shop.producers.orders.store import add_products
from relaybus.streams.sharding.balancing import Balancer, RoundRobin

# Tries per request on a connection error (same Idempotency-Key each time).
TRANSPORT_ATTEMPTS = 3
# How long one request keeps coming back after 429s (shed by an overloaded shop).
SHED_PATIENCE = 600.0


@dataclass(frozen=True)
class Workload:
    """How many orders, over which products, by how many users, how fast.

    Product ``0`` is the hot one (half the demand); a share of requests is sent again
    with the same ``Idempotency-Key`` (a client retry) and must get the same order.
    """

    orders: int = 2000
    products: int = 5
    stock: int = 100
    users: int = 500
    concurrency: int = 16
    two_line_share: float = 0.1
    retry_share: float = 0.05
    seed: int | None = None


@dataclass
class Placed:
    """What the driver saw: the order ids accepted, and what went wrong."""

    order_ids: list[int] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    retries: int = 0
    retry_mismatches: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    latency_ms: list[float] = field(default_factory=list)
    replicas: Counter[str] = field(default_factory=Counter)  # requests per API replica
    transport_retries: int = 0  # requests sent again (same key) after a connection error
    shed: int = 0  # 429 answers (sent again, same key, after their Retry-After)
    keys: dict[str, str] = field(default_factory=dict, repr=False)  # customer -> API key

    @property
    def rate(self) -> float:
        return len(self.order_ids) / self.seconds if self.seconds else 0.0


async def seed(engine: AsyncEngine, workload: Workload, run: str) -> list[str]:
    """Fresh products for this run (``flash-<run>-<n>``), ``workload.stock`` units each,
    in the orders catalog and in inventory (each service's own table)."""
    skus = [f"flash-{run}-{n}" for n in range(workload.products)]
    sessions = session_factory(engine)
    async with sessions() as session, session.begin():
        await add_products(session, {sku: 500 + 250 * n for n, sku in enumerate(skus)})
    async with sessions() as session, session.begin():
        await add_stock(session, dict.fromkeys(skus, workload.stock))
    return skus


async def issue_keys(engine: AsyncEngine, customers: list[str]) -> dict[str, str]:
    """An API key for each simulated customer (one transaction): the workload
    authenticates as its customers, as real clients do."""
    async with session_factory(engine)() as session, session.begin():
        return await issue_keys_for(session, customers)


def customers_of(workload: Workload) -> list[str]:
    return [f"user-{n}" for n in range(workload.users)]


def _weights(products: int) -> list[float]:
    if products == 1:
        return [1.0]
    rest = 0.5 / (products - 1)
    return [0.5] + [rest] * (products - 1)


async def place_orders(
    api_urls: list[str],
    workload: Workload,
    skus: list[str],
    keys: Mapping[str, str],
    on_placed: Callable[[int], None] = lambda n: None,
    balancer: Balancer | None = None,
) -> Placed:
    """POST ``workload.orders`` orders, ``concurrency`` at a time, each to the API
    replica ``balancer`` picks (by customer for the hash strategies; default
    round-robin), each with its customer's API key from ``keys`` (``issue_keys``);
    retried requests reuse their key (on whichever replica) and must get the same id
    back."""
    rng = random.Random(workload.seed)
    weights = _weights(len(skus))
    placed = Placed(keys=dict(keys))
    queue: asyncio.Queue[tuple[str, dict[str, Any], bool]] = asyncio.Queue()
    for _ in range(workload.orders):
        chosen = rng.choices(skus, weights, k=2 if rng.random() < workload.two_line_share else 1)
        items = [{"product": sku, "quantity": rng.randint(1, 2)} for sku in dict.fromkeys(chosen)]
        body = {"customer": f"user-{rng.randrange(workload.users)}", "items": items}
        queue.put_nowait((str(uuid.uuid4()), body, rng.random() < workload.retry_share))

    chooser = balancer or RoundRobin(api_urls)

    async def post(client: httpx.AsyncClient, key: str, body: dict[str, Any]) -> str | None:
        """One order, sent again with the same key after each 429's ``Retry-After``
        (as a well-behaved client does), for up to ``SHED_PATIENCE`` seconds."""
        patience = time.monotonic() + SHED_PATIENCE
        while True:
            answer = await post_once(client, key, body)
            if not isinstance(answer, float) or time.monotonic() + answer > patience:
                return None if isinstance(answer, float) else answer
            placed.shed += 1
            await asyncio.sleep(answer)

    async def post_once(
        client: httpx.AsyncClient, key: str, body: dict[str, Any]
    ) -> str | float | None:
        """The order's id, None on failure, or the seconds to wait after a 429."""
        started = time.perf_counter()
        response = None
        for attempt in range(1, TRANSPORT_ATTEMPTS + 1):
            replica = chooser.pick(body["customer"])
            placed.replicas[replica] += 1
            try:
                response = await client.post(
                    f"{replica}/orders",
                    json=body,
                    headers={
                        "Idempotency-Key": key,
                        "Authorization": f"Bearer {keys[body['customer']]}",
                    },
                )
                break
            except httpx.TransportError as err:
                # A pooled connection the server had just closed, a replica that is
                # restarting: sent again with the same key, so never a second order.
                placed.transport_retries += 1
                if attempt == TRANSPORT_ATTEMPTS:
                    placed.errors.append(f"POST /orders: {err!r}")
                    return None
            except httpx.HTTPError as err:
                placed.errors.append(f"POST /orders: {err!r}")
                return None
            finally:
                chooser.done(replica)
        assert response is not None
        placed.latency_ms.append((time.perf_counter() - started) * 1000)
        placed.statuses[response.status_code] += 1
        if response.status_code == 429:
            return retry_after(response)
        if response.status_code != 202:
            placed.errors.append(
                f"POST /orders answered {response.status_code}: {response.text:.200}"
            )
            return None
        return str(response.json()["id"])

    async def client_loop(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            key, body, retry = queue.get_nowait()
            order_id = await post(client, key, body)
            if order_id is None:
                continue
            if retry:
                placed.retries += 1
                if await post(client, key, body) != order_id:
                    placed.retry_mismatches += 1
            placed.order_ids.append(int(order_id))
            on_placed(len(placed.order_ids))

    limits = httpx.Limits(max_connections=workload.concurrency * len(api_urls))
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(workload.concurrency)))
    placed.seconds = time.perf_counter() - started
    return placed


def retry_after(response: httpx.Response) -> float:
    """A 429's ``Retry-After`` in seconds (delta-seconds form; 1 when absent or not a
    number, at most 60)."""
    try:
        return min(max(float(response.headers.get("retry-after", "1")), 0.0), 60.0)
    except ValueError:
        return 1.0


async def warm_up(engine: AsyncEngine, api_url: str, run: str, within: float) -> float:
    """Place one order for a product of its own and wait until it is final: every
    process is then up, joined and recovered, so the measured workload does not
    include start-up. Returns the seconds it took; raises ``TimeoutError``."""
    skus = await seed(engine, Workload(products=1, stock=1), f"{run}-warmup")
    key = (await issue_keys(engine, [f"warm-up-{run}"]))[f"warm-up-{run}"]
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as client:
        response = await client.post(
            "/orders",
            json={"items": [{"product": skus[0], "quantity": 1}]},
            headers={"Authorization": f"Bearer {key}"},
        )
        response.raise_for_status()
    order_id = int(response.json()["id"])
    if await wait_final(engine, [order_id], within) < 1:
        raise TimeoutError(f"the warm-up order {order_id} did not finish within {within:g} s")
    return time.perf_counter() - started


async def wait_final(
    engine: AsyncEngine,
    order_ids: list[int],
    within: float,
    on_progress: Callable[[int], None] = lambda n: None,
    tick: Callable[[], object] = lambda: None,
) -> int:
    """Poll until every order is final (CONFIRMED, CANCELLED or REJECTED by admission),
    or ``within`` seconds pass;
    returns how many are final. ``tick`` runs on every poll (e.g. a liveness check)."""
    deadline = time.monotonic() + within
    final = 0
    while True:
        async with engine.connect() as conn:
            final = int(
                await conn.scalar(
                    text(
                        "SELECT count(*) FROM orders.orders WHERE id = ANY(:ids) "
                        "AND status IN ('CONFIRMED', 'CANCELLED', 'REJECTED')"
                    ),
                    {"ids": order_ids},
                )
                or 0
            )
        on_progress(final)
        tick()
        if final >= len(order_ids) or time.monotonic() > deadline:
            return final
        await asyncio.sleep(0.5)
