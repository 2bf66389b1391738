"""Open-loop order placement: requests sent on a schedule, whatever the answers.

A closed-loop client (send, wait for the answer, send the next) slows down with the
system it measures and hides the queueing it causes (coordinated omission). Here
request ``n`` is due at ``n / rate`` seconds and sent then, and its latency counts from
when it was due: a stalled answer shows in every request that waited behind it.
Used by ``relaybus demo --burst`` and ``bench/shop_bench.py``.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class Sample:
    """One request: when it was due (seconds into the phase), its latency from then,
    its HTTP status (0: no answer) and the order it created."""

    due: float
    latency_ms: float
    status: int
    order_id: int | None
    retry_after: str | None = None
    lag_ms: float = 0.0  # due -> handed to the HTTP client (the load generator's own delay)


class Orders:
    """Order bodies for the run's customers and products (product 0 the hot one)."""

    def __init__(self, skus: list[str], keys: dict[str, str], seed_: int = 7) -> None:
        self.skus = skus
        self.keys = keys
        self.customers = sorted(keys)
        self.rng = random.Random(seed_)

    def next(self) -> tuple[dict[str, Any], dict[str, str]]:
        sku = self.skus[0] if self.rng.random() < 0.5 else self.rng.choice(self.skus)
        customer = self.rng.choice(self.customers)
        body = {"items": [{"product": sku, "quantity": 1}]}
        headers = {
            "Authorization": f"Bearer {self.keys[customer]}",
            "Idempotency-Key": str(uuid.uuid4()),
        }
        return body, headers


async def post(
    client: httpx.AsyncClient, url: str, orders: Orders, due: float, t0: float
) -> Sample:
    """Send the next order of ``orders`` (due ``due`` seconds after ``t0``); sent once
    more (same ``Idempotency-Key``) on a connection error, as a pooled connection the
    server closed while idle gives; a request that got no answer is status 0."""
    body, headers = orders.next()
    lag = (time.perf_counter() - t0 - due) * 1000
    try:
        try:
            response = await client.post(f"{url}/orders", json=body, headers=headers)
        except httpx.TransportError:
            response = await client.post(f"{url}/orders", json=body, headers=headers)
    except httpx.HTTPError:
        return Sample(due, (time.perf_counter() - t0 - due) * 1000, 0, None, lag_ms=lag)
    latency = (time.perf_counter() - t0 - due) * 1000
    order_id = int(response.json()["id"]) if response.status_code == 202 else None
    retry_after = response.headers.get("retry-after")
    return Sample(due, latency, response.status_code, order_id, retry_after, lag)


async def open_loop(
    client: httpx.AsyncClient, urls: list[str], orders: Orders, rate: float, seconds: float
) -> tuple[list[Sample], float]:
    """Requests due every ``1 / rate`` seconds for ``seconds``, each sent when due
    whether or not earlier ones were answered, to the API replicas ``urls`` in turn."""
    t0 = time.perf_counter()
    tasks: list[asyncio.Task[Sample]] = []
    total = max(1, round(rate * seconds))
    for n in range(total):
        due = n / rate
        delay = t0 + due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        url = urls[n % len(urls)]
        tasks.append(asyncio.create_task(post(client, url, orders, due, t0)))
    samples = await asyncio.gather(*tasks)
    return list(samples), time.perf_counter() - t0
