"""Applying the saga's transitions to orders on the real database: repeated and late
transitions change nothing; a saga that lost its state and numbers steps from 1 again
still lands its final status; a final order never moves."""

from __future__ import annotations

import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.writer import Outbox
from producers.contract import Line, OrderStatus, Transition
from producers.orders.store import OrderStore
from relaybus.cli.flashsale import Workload, seed
from relaybus.db import session_factory


async def _order(engine: AsyncEngine, store: OrderStore) -> int:
    (sku,) = await seed(engine, Workload(products=1, stock=1), uuid.uuid4().hex[:8])
    order_id = uuid.uuid4().int % 10**15
    async with session_factory(engine)() as session, session.begin():
        await store.place(session, order_id, "t", [Line(product=sku, quantity=1)], None)
    return order_id


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
    assert await _state(engine, order_id) == ("CHARGING", ["PENDING", "RESERVING", "CHARGING"])


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
        ["PENDING", "RESERVING", "CHARGING", "CANCELLED"],
    )
