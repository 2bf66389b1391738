"""The order-status read model on the real stack: after a ``kill -9`` of its worker
mid-sale and a restart, the faust table equals a fold of the whole topic
(exactly-once), and the orders API serves every final order from its front cache
or the read model with the database's status."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from relaybus.brokers.kafka import key_partition
from relaybus.brokers.kafka_admin import topic_partitions
from relaybus.settings import Settings
from relaybus.shop.cli.demo import run_flash_sale
from relaybus.shop.cli.flashsale import Workload
from relaybus.shop.cli.processes import Shop
from relaybus.shop.contract import ORDER_STATUS_EVENTS
from relaybus.shop.streams.readmodel.view import StatusEvent, fold
from tests.support.outboxdata import read_topic
from tests.support.poll import eventually
from tests.support.shop import ShopStarter, bearer, shop_settings


@pytest.mark.timeout(900)
async def test_the_read_model_equals_a_fold_of_the_topic_after_a_kill(
    tmp_path: Path, settings: Settings, start_shop: ShopStarter
) -> None:
    shop = shop_settings(gateway_failure_rate=0.2, gateway_timeout_rate=0.0)
    workload = Workload(orders=300, products=4, stock=40, seed=7, users=5000)
    killed: list[int] = []

    def kill_read_model(processes: Shop, placed: int) -> None:
        if placed == 120 and not killed:
            processes.children["order-status"].kill()  # SIGKILL: no commit, no hand-over
            processes.children["order-status"].start()
            killed.append(placed)

    processes = start_shop(shop)
    placed, report = await run_flash_sale(
        settings,
        shop,
        workload,
        processes,
        600,
        None,
        on_placed=lambda n: kill_read_model(processes, n),
    )
    assert killed == [120]
    assert report.ok, report.problems[:20]
    ours = {str(order_id) for order_id in placed.order_ids}

    # Recompute every view from the topic: the fold of all its order.status events.
    records = await read_topic(settings.kafka_bootstrap, ORDER_STATUS_EVENTS)
    partitions = len(await topic_partitions(settings.kafka_bootstrap, ORDER_STATUS_EVENTS))
    expected: dict[str, dict[str, Any]] = {}
    for record in records:
        if record.key in ours:
            # The API finds a key's partition the way the relay's producer placed it.
            assert record.partition == key_partition(record.key.encode(), partitions)
            event = StatusEvent.model_validate(json.loads(record.value))
            expected[record.key] = fold(expected.get(record.key), event)
    assert set(expected) == ours

    async with httpx.AsyncClient(base_url=shop.read_model_base_url, timeout=10) as model:

        async def table() -> dict[str, Any]:
            views = {}
            for key in sorted(ours):
                views[key] = (await model.get(f"/orders/{key}/")).json()["view"]
            return views

        async def equal() -> bool:
            try:
                return await table() == expected
            except httpx.TransportError:
                return False  # the restarted worker is still recovering its table

        await eventually(equal, within=120, what="the read model equal to the topic's fold")

    async with httpx.AsyncClient(base_url=shop.orders_api_url, timeout=10) as api:
        sources = set()
        for key in sorted(ours)[:100]:
            for _ in range(2):
                owner = placed.keys[expected[key]["customer"]]
                answer = await api.get(f"/orders/{key}", headers=bearer(owner))
                assert answer.json()["status"] == expected[key]["status"]
                assert answer.json()["version"] == expected[key]["version"]
                sources.add(answer.headers["X-Served-By"])
        assert "cache" in sources
        assert sources <= {"cache", "read-model", "database"}
