"""The orders API sheds load on the real database: past its backlog limit a request is
answered at once with 429, ``Retry-After`` and the reason, and nothing is written; a
VIP (from its API key) is shed last.

The API runs alone (no pipeline finishes anything), so the backlog only grows and the
limit is the floor: set here to what the database already holds plus two.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.db import create_engine, session_factory
from relaybus.settings import Settings
from relaybus.shop.cli.flashsale import Workload, seed
from relaybus.shop.producers.orders.store import read_backlog
from relaybus.shop.settings import ShopSettings
from tests.integration.test_orders_api import written
from tests.support.shop import api_key, bearer, running_shop, shop_settings

WINDOW = 3600.0  # the saga deadline: nothing ages out of the backlog during the test


async def backlog_now(engine: AsyncEngine) -> int:
    async with session_factory(engine)() as session:
        in_flight, _, _ = await read_backlog(session, 0, WINDOW)
    return in_flight


async def _start_of_test() -> int:
    engine = create_engine(Settings().database_url)
    try:
        return await backlog_now(engine)
    finally:
        await engine.dispose()


@pytest.fixture
def shedding_api(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, ShopSettings, int]]:
    """The API alone, its floor two orders above the backlog the database holds, a
    VIP's limit four above it."""
    start = asyncio.run(_start_of_test())
    shop = shop_settings(
        orders_backlog_seconds=1.0,
        orders_backlog_floor=start + 2,
        orders_backlog_vip_headroom=(start + 4) / (start + 2),
        orders_backlog_poll=0.05,
        saga_deadline=WINDOW,
        orders_api_replicas=1,
    )
    with running_shop(tmp_path_factory.mktemp("shed"), shop, names=["orders-api"]):
        yield shop.orders_api_url, shop, start


async def reading_reaches(client: httpx.AsyncClient, in_flight: int) -> dict[str, object]:
    """The API's own reading of the backlog once it counts ``in_flight`` (polled)."""
    deadline = time.monotonic() + 30
    while True:
        backlog = (await client.get("/healthz")).json()["backlog"]
        if backlog["in_flight"] >= in_flight or time.monotonic() > deadline:
            return dict(backlog)
        await asyncio.sleep(0.05)


async def test_over_the_limit_a_request_is_shed_at_once_and_nothing_is_written(
    shedding_api: tuple[str, ShopSettings, int], engine: AsyncEngine
) -> None:
    url, _shop, start = shedding_api
    (sku,) = await seed(engine, Workload(products=1, stock=100), uuid.uuid4().hex[:8])
    plain = bearer(await api_key(engine, f"cust-{uuid.uuid4().hex[:8]}"))
    vip = bearer(await api_key(engine, f"vip-{uuid.uuid4().hex[:8]}", vip=True))
    body = {"items": [{"product": sku, "quantity": 1}]}
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        for _ in range(2):  # up to the floor
            taken = await client.post("/orders", json=body, headers=plain)
            assert taken.status_code == 202, taken.text
        reading = await reading_reaches(client, start + 2)
        assert reading["in_flight"] == start + 2
        assert reading["limit"] == start + 2
        before = await written(engine)
        key = {"Idempotency-Key": str(uuid.uuid4())}
        shed = await client.post("/orders", json=body, headers={**plain, **key})
        assert shed.status_code == 429
        assert 1 <= int(shed.headers["Retry-After"]) <= 10
        answer = shed.json()
        assert answer["status"] == "REJECTED"
        assert f"{start + 2} orders in flight" in answer["reason"], answer
        assert await written(engine) == before  # no order, no event
        # A VIP is shed last: taken up to its own limit, two orders further.
        for n in (3, 4):
            taken = await client.post("/orders", json=body, headers=vip)
            assert taken.status_code == 202, taken.text
            await reading_reaches(client, start + n)
        over = await client.post("/orders", json=body, headers=vip)
        assert over.status_code == 429
        assert "VIP limit" in over.json()["reason"]
        # The two VIP orders were written; the three refused requests wrote nothing.
        assert await written(engine) == (before[0] + 2, before[1] + 2)
