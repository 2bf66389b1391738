"""One order placed through the API of a running shop is **one** trace in Jaeger, from
the HTTP request through every outbox write, relay publish, stream decision, worker
and saga step to the final status transition and the read model, every hop linked to
the span that sent it."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import pytest

from relaybus.db import create_engine
from relaybus.settings import Settings
from relaybus.shop.cli.flashsale import Workload, seed
from relaybus.tracing.jaeger_query import JaegerQuery, TraceView
from tests.support.cli import run_cli
from tests.support.console import console_process
from tests.support.poll import eventually
from tests.support.shop import ShopStarter, api_key, bearer, shop_settings
from tests.support.traces import stories_of

# Ports of their own: this file may run beside the e2e tests' shop (tests/phases.py).
PORTS = {"orders_api_port": 28080, "gateway_port": 28090, "read_model_port": 28095}
# The spans one confirmed order must have (name prefixes), in saga order.
STORY = (
    "POST /orders",
    "create order.requested",
    "publish order.requested",
    "process outbox.event.order-request",  # admission
    "send shop.order.admitted",
    "process shop.order.admitted",  # orders worker: PENDING + order.created
    "create order.created",
    "publish order.created",
    "saga order.created",
    "send shop.inventory.commands",
    "process shop.inventory.commands",  # the router
    "send shop.inventory.commands.shard.",
    "process shop.inventory.commands.shard.",  # an inventory shard worker
    "create stock.reserved",
    "publish stock.reserved",
    "saga stock.reserved",
    "send shop.payment.commands",
    "process shop.payment.commands",  # payments worker
    "create payment.charged",
    "publish payment.charged",
    "saga payment.charged",
    "send shop.order.transitions",
    "process shop.order.transitions",  # orders worker: the final status
    "create order.status",
    "publish order.status",
    "read model order.status",
)


def _has_story(views: list[TraceView]) -> bool:
    if len(views) != 1:
        return False
    names = [s.name for s in views[0].spans]
    confirmed = any(
        s.attributes.get("relaybus.saga.step", "").endswith("transition=CONFIRMED")
        for s in views[0].spans
    )
    return confirmed and all(any(n.startswith(step) for n in names) for step in STORY)


async def test_one_order_is_one_trace_from_the_request_to_the_final_status(
    tmp_path: Path,
    settings: Settings,
    shop_topics: None,
    traced_env: dict[str, str],
    query: JaegerQuery,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in traced_env.items():
        monkeypatch.setenv(name, value)  # every shop process inherits it
    # The API trusts no client context by default: a forged one must not be the root.
    forged = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"
    shop = shop_settings(gateway_failure_rate=0.0, gateway_timeout_rate=0.0, **PORTS)
    engine = create_engine(settings.database_url)
    starter = ShopStarter(tmp_path)
    try:
        (sku,) = await seed(engine, Workload(products=1, stock=5), uuid.uuid4().hex[:8])
        key = await api_key(engine, f"traced-{uuid.uuid4().hex[:8]}")
        starter(shop)
        async with httpx.AsyncClient(
            base_url=shop.orders_api_url, headers=bearer(key), timeout=10
        ) as client:
            placed = await client.post(
                "/orders",
                json={"items": [{"product": sku, "quantity": 1}]},
                headers={"traceparent": forged},
            )
            assert placed.status_code == 202, placed.text
            order_id = placed.json()["id"]

            async def confirmed() -> bool:
                order = (await client.get(f"/orders/{order_id}")).json()
                return bool(order["status"] == "CONFIRMED")

            await eventually(confirmed, within=180, what="the order's confirmation")
        (story,) = await stories_of(query, str(order_id), _has_story, within=120)
    finally:
        starter.stop_all()
        await engine.dispose()

    spans = {s.span_id: s for s in story.spans}
    (root,) = [s for s in story.spans if s.parent_id is None]
    assert root.name.startswith("POST /orders")
    assert root.service.startswith("shop-orders-api")
    assert root.attributes["relaybus.order.id"] == str(order_id)
    assert story.trace_id != forged.split("-")[1]  # the client's context was not trusted
    # One connected trace: every other span's parent is in it.
    assert all(s.parent_id in spans for s in story.spans if s is not root)
    # Every consumer-side span is linked to the span that sent what it read.
    for span in story.spans:
        if span.name.startswith(("process ", "saga ", "read model ")):
            assert any(link.span_id == span.parent_id for link in span.links), span.name
    # Each hop in its own process.
    services = {s.service for s in story.spans}
    for service in ("orders-api", "relay", "admission", "orders", "saga", "router",
                    "inventory-shard-", "payments", "order-status"):  # fmt: skip
        assert any(name.startswith(f"shop-{service}") for name in services), service
    # The saga's steps in order, each a child of the publish span that carried its input.
    saga = [s for s in story.spans if s.name.startswith("saga ")]
    # (First occurrences: a saga input redelivered around a rebalance is a second span,
    # its transaction aborted or its decision a no-op; both are what happened.)
    steps = dict.fromkeys(s.name for s in sorted(saga, key=lambda s: s.start_us))
    assert list(steps)[:3] == [
        "saga order.created",
        "saga stock.reserved",
        "saga payment.charged",
    ]
    for step in saga:
        assert spans[step.parent_id or ""].name.startswith("publish ")
    # The relay's publish spans say how long their row waited in the outbox.
    for span in story.spans:
        if span.name.startswith("publish "):
            assert float(span.attributes["relaybus.outbox.wait_ms"]) >= 0
            assert span.attributes["relaybus.outcome"] == "published"
    # The final status transition: the orders worker applied it and wrote order.status.
    (final,) = [
        s
        for s in story.spans
        if s.name.startswith("process shop.order.transitions")
        and any(c.name == "create order.status" and c.parent_id == s.span_id for c in story.spans)
        and s.attributes.get("relaybus.outcome") == "applied"
        and s.start_us
        == max(
            x.start_us for x in story.spans if x.name.startswith("process shop.order.transitions")
        )
    ]
    assert final.service.startswith("shop-orders")

    # The same story in the terminal and in the console, read from Jaeger.
    env = {"RELAYBUS_TRACING_JAEGER_URL": query.base}
    printed = run_cli("trace", str(order_id), env=env)
    assert printed.returncode == 0, printed.stderr
    for fact in ("POST /orders", "shop-saga", "outcome=applied", "route=/orders"):
        assert fact in printed.stdout
    assert f"Jaeger: {query.base}/trace/{story.trace_id}" in printed.stdout
    as_json = json.loads(run_cli("trace", str(order_id), "--json", env=env).stdout)
    assert [v["trace_id"] for v in as_json] == [story.trace_id]
    assert len(as_json[0]["spans"]) == len(story.spans)
    with console_process(tmp_path, RELAYBUS_TRACING_JAEGER_URL=query.base) as console:
        browser = console.signed_in()
        page = browser.get("/trace", params={"id": str(order_id)})
        assert page.status_code == 200
        assert "saga payment.charged" in page.text
        assert f'href="{query.base}/trace/{story.trace_id}"' in page.text
        assert page.text.count('class="span') == len(story.spans)
        hostile = browser.get("/trace", params={"id": "<script>alert(1)</script>"})
        assert hostile.status_code == 200
        assert "<script>alert" not in hostile.text
        assert "give a message id" in hostile.text
