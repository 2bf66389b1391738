"""The admission processor in the shop, on the real stack: with a tight per-customer
limit it rejects exactly the over-limit requests, VIPs pass, every rejected request
says which limit refused it (through ``GET /orders/{id}``), and admitted + rejected =
sent. Who is a customer, and who is a VIP, comes from the API key: naming a VIP in
the body is refused and skips no limit."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from pathlib import Path

import httpx

from relaybus.db import create_engine
from relaybus.settings import Settings
from relaybus.shop.cli.flashsale import Workload, seed
from tests.support.poll import eventually
from tests.support.shop import ShopStarter, api_key, bearer, shop_settings

BURST = 3
PER_USER = 5
USERS = 4
VIP_ORDERS = 7


async def test_a_tight_per_user_limit_rejects_exactly_the_excess_and_exempts_vips(
    tmp_path: Path, settings: Settings, start_shop: ShopStarter
) -> None:
    run = uuid.uuid4().hex[:8]
    users = [f"user-{run}-{n}" for n in range(USERS)]
    vip = f"vip-{run}"
    shop = shop_settings(
        # A bucket of BURST that refills once in 1000 s: the 4th and later requests of a
        # customer are over the limit, however the test is scheduled.
        admission_user_rate=0.001,
        admission_user_burst=BURST,
    )
    engine = create_engine(settings.database_url)
    try:
        (sku,) = await seed(engine, Workload(products=1, stock=1000), run)
        keys = {user: await api_key(engine, user) for user in users}
        keys[vip] = await api_key(engine, vip, vip=True)  # the VIP flag is the key's
        impostor = await api_key(engine, f"impostor-{run}")
        start_shop(shop, ["relay", "orders-api", "orders", "admission"])
        body = {"items": [{"product": sku, "quantity": 1}]}
        async with httpx.AsyncClient(base_url=shop.orders_api_url, timeout=30) as client:
            # Naming the VIP (or anyone else) in the body with another key: refused.
            for _ in range(PER_USER):
                named = await client.post(
                    "/orders", json={"customer": vip, **body}, headers=bearer(impostor)
                )
                assert named.status_code == 403, named.text

            async def place(customer: str) -> str:
                answer = await client.post("/orders", json=body, headers=bearer(keys[customer]))
                assert answer.status_code == 202, answer.text
                assert answer.json()["status"] == "REQUESTED"
                return str(answer.json()["id"])

            # Every customer's requests at once, interleaved with the others'.
            sent = await asyncio.gather(
                *(place(user) for user in users for _ in range(PER_USER)),
                *(place(vip) for _ in range(VIP_ORDERS)),
            )
            owners = [user for user in users for _ in range(PER_USER)] + [vip] * VIP_ORDERS

            def auth(owner: str) -> dict[str, str]:
                return bearer(keys[owner])

            async def decided() -> bool:
                for owner, order_id in zip(owners, sent, strict=True):
                    order = (await client.get(f"/orders/{order_id}", headers=auth(owner))).json()
                    if order["status"] == "REQUESTED":
                        return False
                return True

            await eventually(decided, within=120, what="admission's decision on every request")
            orders = [
                (await client.get(f"/orders/{order_id}", headers=auth(owner))).json()
                for owner, order_id in zip(owners, sent, strict=True)
            ]

        outcome: dict[str, Counter[str]] = {owner: Counter() for owner in owners}
        for owner, order in zip(owners, orders, strict=True):
            outcome[owner][order["status"]] += 1
            if order["status"] == "REJECTED":
                assert order["reason"] == "per-user limit (0.001/s, burst 3) exceeded"
                assert [h["status"] for h in order["history"]] == ["REQUESTED", "REJECTED"]
            else:
                assert order["status"] == "PENDING", order  # admitted: an order, no saga here
                assert [h["reason"] for h in order["history"]] == ["received", "admitted"]
        for user in users:
            assert outcome[user] == Counter(PENDING=BURST, REJECTED=PER_USER - BURST), user
        assert outcome[vip] == Counter(PENDING=VIP_ORDERS)
        assert sum(sum(c.values()) for c in outcome.values()) == len(sent)
    finally:
        await engine.dispose()
