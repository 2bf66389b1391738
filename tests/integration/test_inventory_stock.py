"""Inventory on the real database: all lines or none, no oversell under concurrent
reservations of one hot product, releases once, a release before the reserve wins."""

from __future__ import annotations

import asyncio
import random
import uuid
from itertools import count

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.db import create_engine, session_factory
from relaybus.settings import Settings
from relaybus.shop.contract import Line
from relaybus.shop.producers.inventory import stock

_ids = count(int(uuid.uuid4().int % 10**12) * 1000)


async def _product(engine: AsyncEngine, units: int) -> str:
    sku = f"test-{uuid.uuid4().hex[:10]}"
    async with session_factory(engine)() as session, session.begin():
        await stock.add_stock(session, {sku: units})
    return sku


async def _available(engine: AsyncEngine, sku: str) -> int:
    async with engine.connect() as conn:
        return int(
            await conn.scalar(
                text("SELECT available FROM inventory.stock WHERE sku = :s"), {"s": sku}
            )
        )


async def test_concurrent_reservations_of_a_hot_product_never_oversell(settings: Settings) -> None:
    # 40 connections at once, 120 orders of 1..3 units over 50 units.
    engine = create_engine(settings.database_url, pool_size=40)
    try:
        sku = await _product(engine, 50)
        sessions = session_factory(engine)
        rng = random.Random(7)
        wanted = {next(_ids): rng.randint(1, 3) for _ in range(120)}
        gate = asyncio.Semaphore(40)

        async def reserve(order_id: int, units: int) -> bool:
            async with gate, sessions() as session, session.begin():
                outcome = await stock.reserve(
                    session, order_id, [Line(product=sku, quantity=units)]
                )
                return outcome.reserved

        results = await asyncio.gather(*(reserve(o, q) for o, q in wanted.items()))
        sold = sum(q for (o, q), ok in zip(wanted.items(), results, strict=True) if ok)
        assert sold <= 50
        assert await _available(engine, sku) == 50 - sold
        # Refusals happened only when the rest could not fit: the stock ran (nearly) out.
        assert 50 - sold < 3
    finally:
        await engine.dispose()


async def test_an_order_gets_all_of_its_lines_or_none(engine: AsyncEngine) -> None:
    plenty, scarce = await _product(engine, 10), await _product(engine, 1)
    sessions = session_factory(engine)
    order = next(_ids)
    async with sessions() as session, session.begin():
        outcome = await stock.reserve(
            session, order, [Line(product=plenty, quantity=2), Line(product=scarce, quantity=2)]
        )
    assert not outcome.reserved
    assert outcome.reason == f"{scarce} has too few units"
    assert (await _available(engine, plenty), await _available(engine, scarce)) == (10, 1)
    async with sessions() as session, session.begin():  # asked again: the same answer
        again = await stock.reserve(session, order, [Line(product=plenty, quantity=1)])
    assert again == outcome


async def test_a_reservation_is_released_once(engine: AsyncEngine) -> None:
    sku = await _product(engine, 5)
    sessions = session_factory(engine)
    order = next(_ids)
    async with sessions() as session, session.begin():
        assert (await stock.reserve(session, order, [Line(product=sku, quantity=3)])).reserved
    given_back = []
    for _ in range(3):
        async with sessions() as session, session.begin():
            given_back.append(await stock.release(session, order))
    assert given_back == [3, 0, 0]
    assert await _available(engine, sku) == 5


async def test_concurrent_releases_give_back_once(engine: AsyncEngine) -> None:
    sku = await _product(engine, 4)
    sessions = session_factory(engine)
    order = next(_ids)
    async with sessions() as session, session.begin():
        assert (await stock.reserve(session, order, [Line(product=sku, quantity=4)])).reserved

    async def release() -> int:
        async with sessions() as session, session.begin():
            return await stock.release(session, order)

    assert sorted(await asyncio.gather(*(release() for _ in range(5)))) == [0, 0, 0, 0, 4]
    assert await _available(engine, sku) == 4


async def test_a_release_before_the_reserve_leaves_a_tombstone(engine: AsyncEngine) -> None:
    sku = await _product(engine, 5)
    sessions = session_factory(engine)
    order = next(_ids)
    async with sessions() as session, session.begin():
        assert await stock.release(session, order) == 0
    async with sessions() as session, session.begin():
        late = await stock.reserve(session, order, [Line(product=sku, quantity=1)])
    assert not late.reserved
    assert late.reason == "released before any reservation"
    assert await _available(engine, sku) == 5
