"""Inventory contention: reservations/s on one hot product, by mechanism.

``conditional``: ``stock.reserve`` (``UPDATE … SET available = available - q WHERE
sku = … AND available >= q`` in a savepoint, plus the reservation row), the shop's
mechanism. ``select-for-update``: the same transaction with ``SELECT available …
FOR UPDATE`` first and the UPDATE after (the row lock is held one round trip
longer). Both against ``spread``: the conditional one over 64 products (no hot row),
which shows what the hot row's lock costs. Each transaction is one order of one unit;
``--connections`` sessions run at once. Rounds are interleaved.

    .venv/bin/python -m bench.inventory_contention [--seconds 5] [--rounds 3]

Writes ``bench/results/inventory.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bench.report import Comparison, Series, write
from relaybus.db import create_engine, session_factory
from relaybus.settings import Settings
from relaybus.shop.contract import Line
from relaybus.shop.producers.inventory import stock

_ids = itertools.count(int(time.time() * 1000) * 1000)


async def reserve_locked(session: AsyncSession, order_id: int, sku: str) -> None:
    """The row-lock variant: read under ``FOR UPDATE``, then write."""
    available = await session.scalar(
        text("SELECT available FROM inventory.stock WHERE sku = :s FOR UPDATE"), {"s": sku}
    )
    if available is not None and available >= 1:
        await session.execute(
            text("UPDATE inventory.stock SET available = available - 1 WHERE sku = :s"),
            {"s": sku},
        )
    await session.execute(
        text(
            "INSERT INTO inventory.reservations (order_id, status, lines) "
            "VALUES (:id, 'reserved', '[]')"
        ),
        {"id": order_id},
    )


async def run(
    sessions: async_sessionmaker[AsyncSession],
    variant: str,
    skus: list[str],
    seconds: float,
    connections: int,
) -> float:
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker(n: int) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            order_id = next(_ids)
            sku = skus[(n + done) % len(skus)]
            async with sessions() as session, session.begin():
                if variant == "select-for-update":
                    await reserve_locked(session, order_id, sku)
                else:
                    await stock.reserve(session, order_id, [Line(product=sku, quantity=1)])
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(connections)))
    return done / (time.perf_counter() - started)


async def main(seconds: float, rounds: int, connections: int) -> None:
    engine = create_engine(Settings().database_url, pool_size=connections)
    sessions = session_factory(engine)
    run_id = uuid.uuid4().hex[:6]
    hot = [f"bench-hot-{run_id}"]
    spread = [f"bench-spread-{run_id}-{n}" for n in range(64)]
    async with sessions() as session, session.begin():
        await stock.add_stock(session, dict.fromkeys(hot + spread, 10**9))
    series = {
        "conditional": Series("conditional UPDATE, one hot product", "reservations/s"),
        "select-for-update": Series(
            "SELECT FOR UPDATE + UPDATE, one hot product", "reservations/s"
        ),
        "spread": Series("conditional UPDATE over 64 products", "reservations/s"),
    }
    try:
        for n in range(rounds):
            order = list(series) if n % 2 == 0 else list(reversed(series))
            for variant in order:
                skus = spread if variant == "spread" else hot
                mechanism = "conditional" if variant == "spread" else variant
                series[variant].values.append(
                    await run(sessions, mechanism, skus, seconds, connections)
                )
            print(
                f"round {n + 1}: "
                + ", ".join(f"{k} {s.values[-1]:.0f}/s" for k, s in series.items()),
                flush=True,
            )
    finally:
        await engine.dispose()
    print(
        write(
            "inventory",
            {"seconds": seconds, "rounds": rounds, "connections": connections},
            [
                Comparison(
                    "hot product: conditional UPDATE / SELECT FOR UPDATE",
                    series["conditional"],
                    series["select-for-update"],
                    None,
                ),
                Comparison(
                    "conditional UPDATE: one hot product / 64 products",
                    series["conditional"],
                    series["spread"],
                    None,
                ),
            ],
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.rounds, args.connections))
