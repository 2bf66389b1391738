"""A rolling deploy of a schema change: the previous orders service (writing
``order.created`` v1) and the current one (v2, with ``currency``) consume side by side
in one group; the saga reads both (v1 lifted by the shop's upcaster) and every order
is confirmed, whichever release admitted it."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx

from relaybus.db import create_engine
from relaybus.settings import Settings
from relaybus.shop.cli.flashsale import Workload, seed
from relaybus.shop.contract import ORDER_EVENTS
from tests.support.groups import settled_members
from tests.support.outboxdata import read_topic
from tests.support.poll import eventually
from tests.support.relayproc import RelaybusProcess
from tests.support.shop import ShopStarter, api_key, bearer, env_of, shop_settings

ORDERS = 40


async def test_old_and_new_producers_side_by_side_every_order_is_confirmed(
    tmp_path: Path, settings: Settings, start_shop: ShopStarter
) -> None:
    run = uuid.uuid4().hex[:8]
    shop = shop_settings(
        gateway_failure_rate=0.0,
        gateway_timeout_rate=0.0,
        admission_user_rate=1000.0,
        admission_user_burst=1000,
    )
    engine = create_engine(settings.database_url)
    old = RelaybusProcess(
        "orders-old", env_of(shop), tmp_path / "orders-old.log",
        ["worker", "tests.support.old_orders:app"],
    )  # fmt: skip
    try:
        (sku,) = await seed(engine, Workload(products=1, stock=1000), run)
        key = await api_key(engine, f"rolling-{run}")
        start_shop(shop)  # the current release, the orders worker among its processes
        old.start()

        async def both_releases_consume() -> bool:
            return await settled_members(settings.kafka, "orders-admitted") == 2

        await eventually(both_releases_consume, within=90, what="old and new orders workers")
        body = {"items": [{"product": sku, "quantity": 1}]}
        async with httpx.AsyncClient(base_url=shop.orders_api_url, timeout=30) as client:

            async def place() -> str:
                answer = await client.post("/orders", json=body, headers=bearer(key))
                assert answer.status_code == 202, answer.text
                return str(answer.json()["id"])

            ids = await asyncio.gather(*(place() for _ in range(ORDERS)))

            async def statuses() -> list[str]:
                return [
                    (await client.get(f"/orders/{i}", headers=bearer(key))).json()["status"]
                    for i in ids
                ]

            async def all_final() -> bool:
                return all(s in ("CONFIRMED", "CANCELLED", "REJECTED") for s in await statuses())

            await eventually(all_final, within=180, what="every order final")
            assert await statuses() == ["CONFIRMED"] * ORDERS
        created = [
            r for r in await read_topic(settings.kafka_bootstrap, ORDER_EVENTS)
            if r.key in ids and r.headers.get("type") == "order.created"
        ]  # fmt: skip
        versions = {r.headers.get("schema_version", "1") for r in created}
        assert len(created) >= ORDERS
        assert versions == {"1", "2"}, versions  # both releases admitted orders
    finally:
        old.stop()
        await engine.dispose()
