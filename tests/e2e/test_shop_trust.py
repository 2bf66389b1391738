"""The shop's consumers, admission and saga under records written by a client that is
not relaybus (kcat): malformed requests, commands and transitions are dead-lettered
with a reason, forged reserved headers steer nothing, hostile saga input is skipped,
hostile order-status records leave the read model and the orders API's tail unmoved,
and a real order placed afterwards still finishes."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx

from relaybus.consumers.naming import dlq_name
from relaybus.db import create_engine
from relaybus.settings import Settings
from relaybus.shop.cli.flashsale import Workload, seed
from relaybus.shop.contract import (
    INVENTORY_COMMANDS,
    ORDER_EVENTS,
    ORDER_REQUESTS,
    ORDER_STATUS_EVENTS,
    ORDER_TRANSITIONS,
    PAYMENT_COMMANDS,
)
from tests.support.foreign import kcat_produce
from tests.support.outboxdata import read_topic
from tests.support.poll import eventually
from tests.support.shop import ShopStarter, api_key, bearer, shop_settings

Header = tuple[bytes, bytes]


def envelope(type_: str, key: str, *extra: Header) -> list[Header]:
    return [
        (b"id", str(uuid.uuid4()).encode()),
        (b"type", type_.encode()),
        (b"aggregatetype", b"saga"),
        (b"aggregateid", key.encode()),
        *extra,
    ]


# A Debezium-shaped record whose occurred_at overflowed datetime (issue 31 §1): it made
# the workers' and admission's loops retry their batch forever. Written to every
# partition, so the real order placed afterwards follows it on its own partition.
DEBEZIUM_OVERFLOW: tuple[Header, ...] = (
    (b"__debezium.context.connectorName", b"postgresql"),
    (b"occurred_at", b"9" * 18),
)


def status_garbage(key: str, order_id: int) -> list[tuple[bytes, list[Header]]]:
    """Records on the order-status topic, keyed ``key``, that are not a status event of
    ``order_id`` the read model (faust) or the API's tail may apply."""
    status = envelope("order.status", key)
    return [
        (b"{not json", status),
        (b"[" * 60_000, status),
        (b"\xff\xfe{}", status),
        (b'"a string"', status),
        (f'{{"order_id": {order_id}, "version": 99, "status": "<b>PAID</b>"}}'.encode(), status),
        (f'{{"order_id": {order_id}, "version": -1, "status": "CANCELLED"}}'.encode(), status),
        (f'{{"order_id": {order_id}, "version": "NaN"}}'.encode(), status),
        (f'{{"order_id": {order_id}, "version": 1e999}}'.encode(), status),
        (f'{{"order_id": {order_id + 1}, "version": 98, "status": "CANCELLED"}}'.encode(), status),
        (
            f'{{"order_id": {order_id}, "version": 97, "status": "CANCELLED"}}'.encode(),
            envelope("order.created", key),  # not order.status
        ),
        (
            f'{{"order_id": {order_id}, "version": 96, "status": "CANCELLED"}}'.encode(),
            [(b"type", b"\xff\xfe"), (b"x-original-topic", b"shop.orders")],
        ),
        (b"x" * 500_000, status),
        (f'{{"order_id": {order_id}, "version": 95}}'.encode(), [*status, *DEBEZIUM_OVERFLOW]),
    ]


async def test_hostile_records_are_dead_lettered_or_skipped_and_the_shop_goes_on(
    tmp_path: Path, settings: Settings, start_shop: ShopStarter
) -> None:
    shop = shop_settings(gateway_failure_rate=0.0, gateway_timeout_rate=0.0)
    marker = f"hostile-{uuid.uuid4().hex[:8]}"
    bootstrap = settings.kafka_bootstrap
    forged = (
        (b"x-attempts", b"99"),
        (b"x-original-topic", b"shop.payment.commands"),
        (b"x-consumer", b"payments"),
        (b"x-retry-at", b"nan"),
    )
    cases = {
        # topic: [(body, headers, expected dead-letter reason)]
        INVENTORY_COMMANDS: [
            (b"{not json", envelope("inventory.reserve", marker), "not-json"),
            (b"[" * 60_000, envelope("inventory.reserve", marker), "too-deep"),
            (
                b'{"order_id": "<b>1</b>", "step": "reserve"}',
                envelope("inventory.reserve", marker),
                "bad-payload",
            ),
            (b'{"order_id": 1}', envelope("inventory.drop-table", marker), "unknown-type"),
            (
                b'{"order_id": 1, "step": "x", "items": [{"product": "p", "quantity": 1e999}]}',
                envelope("inventory.reserve", marker),
                "huge-number",
            ),
            (
                b'{"order_id": 1, "step": "x", "items": [{"product": "\\u0000", "quantity": 1}]}',
                envelope("inventory.reserve", marker),
                "nul-in-string",
            ),
        ],
        PAYMENT_COMMANDS: [
            (b'"just a string"', envelope("payment.charge", marker), "not-object"),
            (
                b'{"order_id": 1, "step": "charge"}',
                [(b"type", b"payment.charge"), (b"aggregateid", marker.encode())],
                "missing-id",
            ),
            (b"\xff\xfe", envelope("payment.refund", marker), "not-utf8"),
        ],
        ORDER_REQUESTS: [  # the admission processor's input
            (b"{not json", envelope("order.requested", marker, *forged), "not-json"),
            (b'{"order_id": "x"}', envelope("order.requested", marker), "bad-payload"),
            (
                b'{"order_id": 1, "customer": "<script>alert(1)</script>", "client_ip": "::1"}',
                envelope("order.requested", marker, *forged),
                "key-mismatch",  # keyed by the marker, about order 1
            ),
            (b'{"order_id": 1}', envelope("order.admitted", marker), "unknown-type"),
            (b'{"customer": "\xff"}', envelope("order.requested", marker), "not-utf8"),
            (b"[" * 60_000, envelope("order.requested", marker), "too-deep"),
        ],
        ORDER_TRANSITIONS: [
            (
                b'{"order_id": 1, "step": 1, "status": "[red]PAID[/red]"}',
                envelope("order.transition", marker, *forged),
                "bad-payload",
            ),
            (
                b'{"order_id": 1, "step": 3, "status": "CONFIRMED"}',
                envelope("order.transition", marker, *forged),
                "unknown-order",
            ),
        ],
    }
    saga_garbage = [
        (b"{not json", envelope("order.created", marker)),
        (b"[" * 60_000, envelope("order.created", marker)),
        (b'{"order_id": "x"}', envelope("order.created", marker)),
        (b'{"order_id": 1}', envelope("order.exploded", marker)),
        (b'{"order_id": 1}', [(b"type", b"\xff\xfe")]),
        (b"x" * 500_000, envelope("order.created", marker)),
        (b'{"order_id": 1}', envelope("order.created", marker, *DEBEZIUM_OVERFLOW)),
        # Versions the saga's catalog cannot lift: skipped, not guessed.
        (b'{"order_id": 1}', envelope("order.created", marker, (b"schema_version", b"3"))),
        (b'{"order_id": 1}', envelope("order.created", marker, (b"schema_version", b"-1"))),
        (b"{}", envelope("order.created", marker, (b"schema_version", b"9" * 5000))),
    ]

    engine = create_engine(settings.database_url)
    try:
        (sku,) = await seed(engine, Workload(products=1, stock=5), uuid.uuid4().hex[:8])
        start_shop(shop)
        for topic, records in cases.items():
            for body, headers, _ in records:
                kcat_produce(bootstrap, topic, marker.encode(), [body], headers)
        overflow = {  # admission's input and a worker's: one on every partition
            ORDER_REQUESTS: (b'{"order_id": 1}', envelope("order.requested", marker)),
            INVENTORY_COMMANDS: (b'{"order_id": 1}', envelope("inventory.reserve", marker)),
        }
        for topic, (body, headers) in overflow.items():
            for partition in range(shop.shop_partitions):
                kcat_produce(
                    bootstrap,
                    topic,
                    marker.encode(),
                    [body],
                    [*headers, *DEBEZIUM_OVERFLOW],
                    partition=partition,
                )
                cases[topic].append((body, [], "bad-header"))
        for body, headers in saga_garbage:
            kcat_produce(
                bootstrap, ORDER_EVENTS, marker.encode(), [body], headers, compression="zstd"
            )

        async def letters() -> dict[str, list[str]]:
            out = {}
            for topic in cases:
                try:
                    records = await read_topic(bootstrap, dlq_name(topic))
                except LookupError:
                    records = []
                out[topic] = [r.headers.get("x-dlq-reason", "") for r in records if r.key == marker]
            return out

        async def all_dead_lettered() -> bool:
            got = await letters()
            return all(len(got[t]) == len(cases[t]) for t in cases)

        await eventually(all_dead_lettered, within=120, what="every hostile record's DLQ copy")
        got = await letters()
        for topic, records in cases.items():
            assert sorted(got[topic]) == sorted(r for _, _, r in records), topic

        # The saga skipped its garbage and still runs a real order to the end.
        key = await api_key(engine, f"z-{marker}")
        async with httpx.AsyncClient(base_url=shop.orders_api_url, headers=bearer(key)) as client:
            placed = await client.post("/orders", json={"items": [{"product": sku, "quantity": 1}]})
            order_id = placed.json()["id"]
            # Hostile status records about the real order, compressed as a foreign
            # producer may; the read model and the API's tail must skip every one.
            for body, headers in status_garbage(str(order_id), int(order_id)):
                kcat_produce(
                    bootstrap,
                    ORDER_STATUS_EVENTS,
                    str(order_id).encode(),
                    [body],
                    headers,
                    compression="zstd",
                )

            async def confirmed() -> bool:
                order = (await client.get(f"/orders/{order_id}")).json()
                return bool(order["status"] == "CONFIRMED")

            await eventually(confirmed, within=120, what="the real order's confirmation")
            order = (await client.get(f"/orders/{order_id}")).json()
        assert [h["status"] for h in order["history"]] == [
            "REQUESTED",
            "PENDING",
            "RESERVING",
            "CHARGING",
            "CONFIRMED",
        ]
        saga_log = (tmp_path / "saga.log").read_text(errors="replace")
        assert "saga: skipping" in saga_log
        assert "Traceback" not in saga_log

        # The read model skipped every hostile status record: its view of the order
        # is the database's history, version for version, and it still answers.
        async with httpx.AsyncClient(base_url=shop.read_model_base_url, timeout=10) as model:

            async def model_confirmed() -> bool:
                got = await model.get(f"/orders/{order_id}/")
                view = got.json()["view"] if got.status_code == 200 else None
                return bool(view and view["status"] == "CONFIRMED")

            # The read model replays its whole input on every start (the topic holds
            # every earlier test's orders): allow for that before its view counts.
            await eventually(model_confirmed, within=240, what="the read model's CONFIRMED")
            view = (await model.get(f"/orders/{order_id}/")).json()["view"]
        assert view["version"] == len(order["history"]) - 1
        assert [h["status"] for h in view["history"]] == [h["status"] for h in order["history"]]
        model_log = (tmp_path / "order-status.log").read_text(errors="replace")
        for skipped in (
            "skipping a record that is not order.status",
            "skipping an order.status without a body or over the cap",
            "skipping an unreadable order.status",
        ):
            assert f"read model: {skipped}" in model_log, skipped
        assert "is about another order" in model_log
        assert "Traceback" not in model_log
        # The API's tail read past them too (an unreadable record invalidates
        # nothing), and a read that asks for the confirmed version is answered.
        api_log = (tmp_path / "orders-api.log").read_text(errors="replace")
        assert "order.status record at" in api_log
        assert "Traceback" not in api_log
        async with httpx.AsyncClient(base_url=shop.orders_api_url, headers=bearer(key)) as client:
            fresh = await client.get(
                f"/orders/{order_id}", params={"min_version": len(order["history"]) - 1}
            )
        assert fresh.status_code == 200
        assert fresh.json()["status"] == "CONFIRMED"
    finally:
        await engine.dispose()
