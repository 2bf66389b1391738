"""The payments service's gateway client against the real simulated gateway (a child
process): timeouts resolved by asking, never guessed; one charge per key; refunds void."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from relaybus.shop.producers.payments.client import GatewayClient, GatewayUnavailable
from tests.support.shop import running_shop, shop_settings

SLOW = shop_settings(
    gateway_port=18091, gateway_failure_rate=0.0, gateway_timeout_rate=1.0, payment_timeout=0.3
)
DECLINING = shop_settings(gateway_port=18092, gateway_failure_rate=1.0, gateway_timeout_rate=0.0)


@pytest.fixture(scope="module")
def slow_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_shop(tmp_path_factory.mktemp("slow"), SLOW, names=["gateway"]):
        yield SLOW.gateway_base_url


@pytest.fixture(scope="module")
def declining_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_shop(tmp_path_factory.mktemp("declining"), DECLINING, names=["gateway"]):
        yield DECLINING.gateway_base_url


async def charges_for(url: str, key: str) -> list[dict[str, object]]:
    async with httpx.AsyncClient(base_url=url) as client:
        return [c for c in (await client.get("/charges")).json() if c["key"] == key]


async def test_a_timed_out_charge_is_resolved_by_asking_the_gateway(slow_gateway: str) -> None:
    client = GatewayClient(slow_gateway, timeout=0.3, retries=3)
    key = f"order-{uuid.uuid4().int % 10**9}"
    try:
        charge = await client.charge(key, 1234)
    finally:
        await client.aclose()
    assert charge.status == "charged"
    assert charge.amount_cents == 1234
    assert len(await charges_for(slow_gateway, key)) == 1


async def test_the_same_key_charges_once(declining_gateway: str) -> None:
    client = GatewayClient(declining_gateway)
    key = f"order-{uuid.uuid4().int % 10**9}"
    try:
        first = await client.charge(key, 500)
        second = await client.charge(key, 500)
    finally:
        await client.aclose()
    assert first == second
    assert first.status == "declined"
    assert first.reason == "card declined"
    assert len(await charges_for(declining_gateway, key)) == 1


async def test_a_refund_before_the_charge_voids_the_key(slow_gateway: str) -> None:
    client = GatewayClient(slow_gateway, timeout=0.3)
    key = f"order-{uuid.uuid4().int % 10**9}"
    try:
        refund = await client.refund(key)
        late = await client.charge(key, 700)
        again = await client.refund(key)
    finally:
        await client.aclose()
    assert refund.status == "voided"
    assert refund.refunded_cents == 0
    assert late.status == "voided"
    assert again == refund


async def test_a_gateway_that_does_not_answer_is_unavailable_not_guessed(tmp_path: Path) -> None:
    client = GatewayClient("http://127.0.0.1:9", timeout=0.2, retries=2)
    try:
        with pytest.raises(GatewayUnavailable, match="after 3 tries"):
            await client.charge("order-1", 100)
    finally:
        await client.aclose()


async def test_a_refund_returns_the_charge_once(slow_gateway: str) -> None:
    client = GatewayClient(slow_gateway, timeout=0.3)
    key = f"order-{uuid.uuid4().int % 10**9}"
    try:
        charged = await client.charge(key, 900)
        refunds = [await client.refund(key), await client.refund(key)]
    finally:
        await client.aclose()
    assert charged.status == "charged"
    assert [(r.status, r.refunded_cents) for r in refunds] == [("refunded", 900)] * 2
