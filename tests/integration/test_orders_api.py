"""The orders API on the real database: who is calling (API keys: 401 without one, the
customer from the key, an order visible to its own customer only), idempotency keys
per customer with a retention, validation, nothing written on bad input, and the
order with its history."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.db import session_factory
from relaybus.shop.cli.flashsale import Workload, seed
from relaybus.shop.producers.orders.credentials import ApiKeys, issue_key, revoke_key
from relaybus.shop.producers.orders.store import OrderStore
from tests.support.shop import api_key, bearer, running_shop, shop_settings

SHOP = shop_settings(orders_api_max_body_bytes=64 * 1024)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_shop(tmp_path_factory.mktemp("api"), SHOP, names=["orders-api"]):
        yield SHOP.orders_api_url


@pytest.fixture
async def product(engine: AsyncEngine) -> str:
    (sku,) = await seed(engine, Workload(products=1, stock=10), uuid.uuid4().hex[:8])
    return sku


@pytest.fixture
async def customer(engine: AsyncEngine) -> tuple[str, dict[str, str]]:
    """A fresh customer and the Authorization header of its API key."""
    name = f"cust-{uuid.uuid4().hex[:8]}"
    return name, bearer(await api_key(engine, name))


async def written(engine: AsyncEngine) -> tuple[int, int]:
    """(orders, order requests in outbox + archive): what a refused request must not move."""
    async with engine.connect() as conn:
        orders = await conn.scalar(text("SELECT count(*) FROM orders.orders"))
        events = await conn.scalar(
            text(
                "SELECT (SELECT count(*) FROM outbox WHERE aggregatetype = 'order-request') + "
                "(SELECT count(*) FROM outbox_archive WHERE aggregatetype = 'order-request')"
            )
        )
    return int(orders or 0), int(events or 0)


async def test_same_key_five_times_concurrently_makes_one_order(
    api: str, product: str, engine: AsyncEngine, customer: tuple[str, dict[str, str]]
) -> None:
    name, auth = customer
    body = {"items": [{"product": product, "quantity": 2}]}
    key = str(uuid.uuid4())
    before = await written(engine)
    async with httpx.AsyncClient(base_url=api, headers=auth) as client:
        responses = await asyncio.gather(
            *(client.post("/orders", json=body, headers={"Idempotency-Key": key}) for _ in range(5))
        )
    assert [r.status_code for r in responses] == [202] * 5, responses[0].text
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 4
    after = await written(engine)
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)
    async with engine.connect() as conn:
        event = (
            await conn.execute(
                text(
                    "SELECT type, payload FROM outbox WHERE aggregateid = :id "
                    "AND aggregatetype = 'order-request' UNION ALL "
                    "SELECT type, payload FROM outbox_archive WHERE aggregateid = :id "
                    "AND aggregatetype = 'order-request'"
                ),
                {"id": ids.pop()},
            )
        ).one()
    assert event.type == "order.requested"
    assert event.payload == {
        "order_id": int(event.payload["order_id"]),
        "customer": name,  # from the key: the body named none
        "client_ip": "127.0.0.1",
        "vip": False,
    }


async def test_same_key_with_another_body_is_a_422_naming_the_key(
    api: str, product: str, engine: AsyncEngine, customer: tuple[str, dict[str, str]]
) -> None:
    key = str(uuid.uuid4())
    name, auth = customer
    async with httpx.AsyncClient(base_url=api, headers=auth) as client:
        first = await client.post(
            "/orders",
            json={"customer": name, "items": [{"product": product, "quantity": 1}]},
            headers={"Idempotency-Key": key},
        )
        assert first.status_code == 202
        before = await written(engine)
        second = await client.post(
            "/orders",
            json={"customer": name, "items": [{"product": product, "quantity": 3}]},
            headers={"Idempotency-Key": key},
        )
    assert second.status_code == 422
    assert second.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    assert "different request body" in second.json()["detail"][0]["msg"]
    assert await written(engine) == before


BAD_BODIES: list[tuple[str, Any, int, str]] = [
    (
        "another customer than the key's",
        {"customer": "someone-else", "items": [{"product": "P", "quantity": 1}]},
        403,
        "another customer",
    ),
    ("missing items", {"customer": "c"}, 422, "items"),
    ("empty items", {"customer": "c", "items": []}, 422, "items"),
    (
        "zero quantity",
        {"customer": "c", "items": [{"product": "P", "quantity": 0}]},
        422,
        "quantity",
    ),
    (
        "negative quantity",
        {"customer": "c", "items": [{"product": "P", "quantity": -2}]},
        422,
        "quantity",
    ),
    (
        "string quantity",
        {"customer": "c", "items": [{"product": "P", "quantity": "2"}]},
        422,
        "quantity",
    ),
    (
        "float quantity",
        {"customer": "c", "items": [{"product": "P", "quantity": 1.5}]},
        422,
        "quantity",
    ),
    (
        "customer not a string",
        {"customer": 5, "items": [{"product": "P", "quantity": 1}]},
        422,
        "customer",
    ),
    ("unknown field", {"customer": "c", "items": [], "coupon": "x"}, 422, "coupon"),
    ("a list body", [1, 2], 422, "body"),
    (
        "unknown product",
        {"customer": "c", "items": [{"product": "nope-sku", "quantity": 1}]},
        422,
        "nope-sku",
    ),
    (
        "same product twice",
        {
            "customer": "c",
            "items": [{"product": "P", "quantity": 1}, {"product": "P", "quantity": 1}],
        },
        422,
        "appears twice",
    ),
]


@pytest.mark.parametrize(
    ("case", "body", "status", "names"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES]
)
async def test_invalid_bodies_are_4xx_naming_the_problem_and_write_nothing(
    api: str,
    product: str,
    engine: AsyncEngine,
    customer: tuple[str, dict[str, str]],
    case: str,
    body: Any,
    status: int,
    names: str,
) -> None:
    # "P" in a case stands for this test's real product, "c" for the key's customer.
    name, auth = customer
    raw = json.dumps(body).replace('"P"', json.dumps(product)).replace('"c"', json.dumps(name))
    before = await written(engine)
    async with httpx.AsyncClient(base_url=api, headers=auth) as client:
        response = await client.post(
            "/orders",
            content=raw,
            headers={"content-type": "application/json", "Idempotency-Key": str(uuid.uuid4())},
        )
    assert response.status_code == status, response.text
    assert names in response.text, response.text
    assert "Traceback" not in response.text
    assert await written(engine) == before


async def test_not_json_and_huge_bodies_are_refused_without_writing(
    api: str, engine: AsyncEngine, customer: tuple[str, dict[str, str]]
) -> None:
    before = await written(engine)
    async with httpx.AsyncClient(base_url=api, timeout=60, headers=customer[1]) as client:
        not_json = await client.post(
            "/orders", content=b"{customer: <b>x</b>", headers={"content-type": "application/json"}
        )
        huge = await client.post(
            "/orders",
            content=b'{"customer": "' + b"x" * 10_000_000 + b'"}',
            headers={"content-type": "application/json"},
        )

        async def chunks() -> Any:
            for _ in range(200):
                yield b"x" * 65_536

        streamed = await client.post(
            "/orders", content=chunks(), headers={"content-type": "application/json"}
        )
        bad_key = await client.post(
            "/orders",
            json={"items": [{"product": "x", "quantity": 1}]},
            headers=[(b"Idempotency-Key", "\u00e9".encode() * 3)],
        )
    assert not_json.status_code == 422
    assert "json" in not_json.text.lower()
    assert huge.status_code == 413
    assert "over 65536 bytes" in huge.text
    assert streamed.status_code == 413
    assert bad_key.status_code == 400
    assert "Idempotency-Key" in bad_key.text
    assert await written(engine) == before


async def test_get_returns_status_and_history_and_bad_ids_are_4xx(
    api: str, product: str, customer: tuple[str, dict[str, str]]
) -> None:
    async with httpx.AsyncClient(base_url=api, headers=customer[1]) as client:
        placed = await client.post("/orders", json={"items": [{"product": product, "quantity": 1}]})
        order = (await client.get(f"/orders/{placed.json()['id']}")).json()
        missing = await client.get("/orders/1")
        not_an_id = await client.get("/orders/abc")
        too_big = await client.get(f"/orders/{2**70}")
        docs = await client.get("/openapi.json")
    assert order["status"] == "REQUESTED"
    assert order["customer"] == customer[0]
    assert order["version"] == 0
    assert order["history"][0] == {
        **order["history"][0],
        "step": 0,
        "status": "REQUESTED",
        "reason": "received",
    }
    assert missing.status_code == 404
    assert not_an_id.status_code == 422
    assert "order_id" in not_an_id.text
    assert too_big.status_code == 422
    assert "/orders/{order_id}" in docs.json()["paths"]


NO_KEY: list[tuple[str, dict[str, str]]] = [
    ("no header", {}),
    ("not bearer", {"Authorization": "Basic YTpi"}),
    ("malformed", {"Authorization": "Bearer hunter2"}),
    ("unknown key", {"Authorization": f"Bearer rbk_{'0' * 16}_{'A' * 43}"}),
    ("x-api-key garbage", {"X-API-Key": "<script>"}),
]


@pytest.mark.parametrize(("case", "headers"), NO_KEY, ids=[c for c, _ in NO_KEY])
async def test_without_a_valid_key_it_is_401_and_writes_nothing(
    api: str, product: str, engine: AsyncEngine, case: str, headers: dict[str, str]
) -> None:
    before = await written(engine)
    async with httpx.AsyncClient(base_url=api, headers=headers) as client:
        good_body = await client.post(
            "/orders",
            json={"customer": "vip-alice", "items": [{"product": product, "quantity": 1}]},
            headers={"Idempotency-Key": str(uuid.uuid4())},
        )
        bad_body = await client.post("/orders", content=b"{nope")  # 401 before 422
        read = await client.get("/orders/1")
        health = await client.get("/healthz")
    for answer in (good_body, bad_body, read):
        assert answer.status_code == 401, (case, answer.text)
        assert answer.headers["www-authenticate"].startswith("Bearer")
    assert health.status_code == 200  # the probe stays open
    assert await written(engine) == before


async def test_a_customer_reads_only_its_own_orders(
    api: str, product: str, engine: AsyncEngine, customer: tuple[str, dict[str, str]]
) -> None:
    other = bearer(await api_key(engine, f"other-{uuid.uuid4().hex[:8]}"))
    async with httpx.AsyncClient(base_url=api) as client:
        placed = await client.post(
            "/orders", json={"items": [{"product": product, "quantity": 1}]}, headers=customer[1]
        )
        order_id = placed.json()["id"]
        mine = await client.get(f"/orders/{order_id}", headers=customer[1])
        theirs = await client.get(f"/orders/{order_id}", headers=other)
        nobody = await client.get(f"/orders/{order_id}")
    assert mine.status_code == 200
    assert theirs.status_code == 404  # the same answer as an order that does not exist
    assert theirs.json() == {"detail": f"no order {order_id}"}
    assert nobody.status_code == 401


async def test_idempotency_keys_are_per_customer_and_expire(
    api: str, product: str, engine: AsyncEngine, customer: tuple[str, dict[str, str]]
) -> None:
    other = bearer(await api_key(engine, f"other-{uuid.uuid4().hex[:8]}"))
    key = {"Idempotency-Key": str(uuid.uuid4())}
    body = {"items": [{"product": product, "quantity": 1}]}
    async with httpx.AsyncClient(base_url=api) as client:
        first = await client.post("/orders", json=body, headers={**customer[1], **key})
        # Another customer's same key is its own: a new order, never the first's answer.
        theirs = await client.post("/orders", json=body, headers={**other, **key})
        assert first.json()["id"] != theirs.json()["id"]
        assert "Idempotent-Replayed" not in theirs.headers
        again = await client.post("/orders", json=body, headers={**customer[1], **key})
        assert again.json()["id"] == first.json()["id"]
        # Past the retention (backdated here) the sweep forgets it: a new order.
        async with session_factory(engine)() as session, session.begin():
            await session.execute(
                text(
                    "UPDATE orders.idempotency_keys SET created_at = now() - interval '2 days' "
                    "WHERE key = :k"
                ),
                {"k": key["Idempotency-Key"]},
            )
        async with session_factory(engine)() as session, session.begin():
            purged = await OrderStore(None).purge_idempotency_keys(  # type: ignore[arg-type]
                session, SHOP.orders_idempotency_retention
            )
        assert purged >= 2
        later = await client.post("/orders", json=body, headers={**customer[1], **key})
        assert later.status_code == 202
        assert later.json()["id"] != first.json()["id"]


async def test_forwarded_for_from_an_untrusted_peer_is_not_the_client_address(
    api: str, product: str, engine: AsyncEngine, customer: tuple[str, dict[str, str]]
) -> None:
    """uvicorn's default believed X-Forwarded-For from loopback: a client picked its own
    address per request, and 80 characters of it dead-lettered the order request."""
    forged = {"X-Forwarded-For": "9" * 80, "X-Real-IP": "203.0.113.9"}
    async with httpx.AsyncClient(base_url=api, headers=customer[1]) as client:
        placed = await client.post(
            "/orders", json={"items": [{"product": product, "quantity": 1}]}, headers=forged
        )
    assert placed.status_code == 202
    async with engine.connect() as conn:
        payload = await conn.scalar(
            text(
                "SELECT payload FROM outbox WHERE aggregateid = :id AND type = 'order.requested' "
                "UNION ALL SELECT payload FROM outbox_archive WHERE aggregateid = :id "
                "AND type = 'order.requested'"
            ),
            {"id": placed.json()["id"]},
        )
    assert payload["client_ip"] == "127.0.0.1"


async def test_a_key_is_checked_by_its_hash_and_stops_working_once_revoked(
    engine: AsyncEngine,
) -> None:
    clock = [0.0]
    keys = ApiKeys(engine, cache_seconds=30, clock=lambda: clock[0])
    async with session_factory(engine)() as session, session.begin():
        issued = await issue_key(session, f"rev-{uuid.uuid4().hex[:8]}", vip=True)
    caller = await keys.authenticate(issued.token)
    assert caller is not None
    assert (caller.customer, caller.vip) == (issued.customer, True)
    wrong_secret = issued.token[:-4] + ("AAAA" if not issued.token.endswith("AAAA") else "BBBB")
    assert await keys.authenticate(wrong_secret) is None
    async with engine.connect() as conn:
        stored = await conn.scalar(
            text("SELECT secret_sha256 FROM orders.api_keys WHERE key_id = :k"),
            {"k": issued.key_id},
        )
    secret = issued.token[len("rbk_") + 17 :]
    assert secret.encode() not in bytes(stored)  # only a digest
    async with session_factory(engine)() as session, session.begin():
        assert await revoke_key(session, issued.key_id) == issued.customer
    assert await keys.authenticate(issued.token) is not None  # still cached
    clock[0] += 31
    assert await keys.authenticate(issued.token) is None


async def test_refresh_loads_every_live_key_at_once_and_forgets_a_revoked_one(
    engine: AsyncEngine,
) -> None:
    """After ``refresh`` a known key is checked without a statement (counted on the real
    engine); a key revoked before the next refresh is refused at once after it."""
    keys = ApiKeys(engine, cache_seconds=30)
    run = uuid.uuid4().hex[:8]
    async with session_factory(engine)() as session, session.begin():
        issued = [await issue_key(session, f"dir-{run}-{n}", vip=n == 0) for n in range(3)]
    assert await keys.refresh() >= 3
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(str(args[2]))

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        callers = [await keys.authenticate(key.token) for key in issued]
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count)
    assert statements == []
    assert [(c.customer, c.vip) for c in callers if c is not None] == [
        (key.customer, n == 0) for n, key in enumerate(issued)
    ]
    async with session_factory(engine)() as session, session.begin():
        assert await revoke_key(session, issued[1].key_id) == issued[1].customer
    assert await keys.authenticate(issued[1].token) is not None  # trusted until refreshed
    await keys.refresh()
    assert await keys.authenticate(issued[1].token) is None
    assert await keys.authenticate(issued[2].token) is not None
