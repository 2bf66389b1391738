"""Applying admission's decisions and the saga's transitions to orders on the real
database: repeated and late transitions change nothing; a saga that lost its state and
numbers steps from 1 again still lands its final status; a final order never moves;
every status an order takes is announced once as ``order.status`` with its version."""

from __future__ import annotations

import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.db import session_factory
from relaybus.outbox.writer import Outbox
from relaybus.shop.cli.flashsale import Workload, seed
from relaybus.shop.contract import Line, OrderStatus, Transition
from relaybus.shop.producers.orders.store import OrderStore


async def _requested(engine: AsyncEngine, store: OrderStore) -> int:
    (sku,) = await seed(engine, Workload(products=1, stock=1), uuid.uuid4().hex[:8])
    order_id = uuid.uuid4().int % 10**15
    async with session_factory(engine)() as session, session.begin():
        await store.place(session, order_id, "t", [Line(product=sku, quantity=1)], None)
    return order_id


async def _order(engine: AsyncEngine, store: OrderStore) -> int:
    """An admitted order (PENDING)."""
    order_id = await _requested(engine, store)
    async with session_factory(engine)() as session, session.begin():
        assert await store.admit(session, order_id)
    return order_id


async def _events(engine: AsyncEngine, order_id: int, aggregate: str) -> list[tuple[str, dict]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT type, payload FROM outbox "
                "WHERE aggregateid = :id AND aggregatetype = :a UNION ALL "
                "SELECT type, payload FROM outbox_archive "
                "WHERE aggregateid = :id AND aggregatetype = :a"
            ),
            {"id": str(order_id), "a": aggregate},
        )
        return [(row.type, row.payload) for row in rows]


async def _apply(
    engine: AsyncEngine, store: OrderStore, order_id: int, step: int, status: OrderStatus
) -> None:
    async with session_factory(engine)() as session, session.begin():
        assert await store.apply(
            session,
            Transition(order_id=order_id, step=step, status=status, reason=status.value.lower()),
        )


async def _state(engine: AsyncEngine, order_id: int) -> tuple[str, list[str]]:
    async with engine.connect() as conn:
        status = await conn.scalar(
            text("SELECT status FROM orders.orders WHERE id = :id"), {"id": order_id}
        )
        history = (
            (
                await conn.execute(
                    text("SELECT status FROM orders.history WHERE order_id = :id ORDER BY step"),
                    {"id": order_id},
                )
            )
            .scalars()
            .all()
        )
    return str(status), list(history)


async def test_repeated_and_late_transitions_change_nothing(engine: AsyncEngine) -> None:
    store = OrderStore(Outbox())
    order_id = await _order(engine, store)
    for step, status in [
        (1, OrderStatus.RESERVING),
        (2, OrderStatus.CHARGING),
        (1, OrderStatus.RESERVING),
        (2, OrderStatus.CHARGING),
    ]:
        await _apply(engine, store, order_id, step, status)
    assert await _state(engine, order_id) == (
        "CHARGING",
        ["REQUESTED", "PENDING", "RESERVING", "CHARGING"],
    )


async def test_a_restarted_saga_still_lands_its_final_status(engine: AsyncEngine) -> None:
    store = OrderStore(Outbox())
    order_id = await _order(engine, store)
    await _apply(engine, store, order_id, 1, OrderStatus.RESERVING)
    await _apply(engine, store, order_id, 2, OrderStatus.CHARGING)
    # The saga lost its state: it compensates from step 1 again.
    await _apply(engine, store, order_id, 1, OrderStatus.RELEASING)
    await _apply(engine, store, order_id, 2, OrderStatus.CANCELLED)
    await _apply(engine, store, order_id, 3, OrderStatus.CONFIRMED)  # never moves a final one
    assert await _state(engine, order_id) == (
        "CANCELLED",
        ["REQUESTED", "PENDING", "RESERVING", "CHARGING", "CANCELLED"],
    )
    statuses = await _events(engine, order_id, "order-status")
    assert sorted((p["version"], p["status"]) for _, p in statuses) == list(
        enumerate(["REQUESTED", "PENDING", "RESERVING", "CHARGING", "CANCELLED"])
    )
    assert {t for t, _ in statuses} == {"order.status"}


async def test_admission_makes_the_order_and_its_created_event_once(engine: AsyncEngine) -> None:
    store = OrderStore(Outbox())
    order_id = await _requested(engine, store)
    assert await _events(engine, order_id, "order") == []  # no saga before admission
    for _ in range(2):
        async with session_factory(engine)() as session, session.begin():
            assert await store.admit(session, order_id)
    async with session_factory(engine)() as session, session.begin():
        assert await store.reject(session, order_id, "too late")  # decided already
    assert await _state(engine, order_id) == ("PENDING", ["REQUESTED", "PENDING"])
    created = await _events(engine, order_id, "order")
    assert [t for t, _ in created] == ["order.created"]
    assert created[0][1]["order_id"] == order_id


async def test_a_rejected_request_never_becomes_an_order(engine: AsyncEngine) -> None:
    store = OrderStore(Outbox())
    order_id = await _requested(engine, store)
    reason = "per-user limit (1/s, burst 1) exceeded"
    async with session_factory(engine)() as session, session.begin():
        assert await store.reject(session, order_id, reason)
    async with session_factory(engine)() as session, session.begin():
        assert await store.admit(session, order_id)  # a late admission changes nothing
    assert await _state(engine, order_id) == ("REJECTED", ["REQUESTED", "REJECTED"])
    async with session_factory(engine)() as session:
        order = await store.get(session, order_id)
    assert order is not None
    assert (order["status"], order["reason"], order["version"]) == ("REJECTED", reason, 1)
    assert await _events(engine, order_id, "order") == []
    async with session_factory(engine)() as session, session.begin():
        assert not await store.admit(session, 1)  # unknown order
        assert not await store.reject(session, 1, "x")
