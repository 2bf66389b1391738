"""A rolling deploy of a schema change: the previous orders service (writing
``order.created`` v1) and the current one (v2, with ``currency``) consume side by side
in one group; the saga reads both (v1 lifted by the shop's upcaster) and every order
is confirmed, whichever release admitted it."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
from aiokafka.admin import AIOKafkaAdminClient

from relaybus.brokers.kafka_connection import kafka_client_options
from relaybus.db import create_engine
from relaybus.settings import Settings
from relaybus.shop.cli.flashsale import Workload, seed
from relaybus.shop.contract import ORDER_EVENTS
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
            """The group settled with partitions assigned to both workers (two members
            listed is not enough: until the rebalance ends the first still has all)."""
            admin = AIOKafkaAdminClient(**kafka_client_options(settings.kafka))
            await admin.start()
            try:
                described = await admin.describe_consumer_groups(["orders-admitted"])
            finally:
                await admin.close()
            for response in described:
                for group in response.groups:
                    state, members = group[2], group[5]
                    # An assignment with no partition is 10 bytes (version, no topic, no data).
                    if state == "Stable" and len(members) == 2:
                        return all(len(member[4]) > 10 for member in members)
            return False

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
