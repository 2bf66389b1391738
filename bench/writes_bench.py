"""What the outbox costs the writers: throughput with 1..64 writers, and the shop's
real order transaction with and without its events, next to the database alone.

(a) Writers: ``--writers`` concurrent tasks (one connection each) commit
``--transactions`` one-row order inserts in all, either the INSERT alone or the
INSERT plus its event in the same statement (``Outbox.write``). Rounds of the two
interleaved; each round starts from truncated, vacuumed tables.

(b) The shop's order transaction: ``OrderStore.place`` (price lookup, the order row
with its lines as JSONB, its first history row, ``order.requested`` in the order's
statement and ``order.status`` as its own INSERT), 8 writers, with the events and
with ``NoEvent`` (the same store whose outbox writes nothing). Then the database
alone: the SQL those two variants send, captured from one real call each, run by
``pgbench`` (a C client) with a fresh order id per transaction.

(c) Typed events: ``Outbox.enqueue`` of an event instance (``relaybus.events``)
against the same payload and header as a dict, 8 writers, interleaved rounds.

Run (stack up, database migrated):  python -m bench.writes_bench
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from sqlalchemy import event, text
from sqlalchemy.engine import Result
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from bench.db_inserts import pgbench_tps
from bench.relay_bench import (
    ORDER_AGGREGATE,
    create_insert_tables,
    inserts,
    reset_insert_tables,
)
from bench.report import Comparison, Series, amend, write
from relaybus.db import create_engine, session_factory
from relaybus.events import event as declare_event
from relaybus.ids import uuid7
from relaybus.outbox.writer import BusinessStatement, Outbox
from relaybus.settings import Settings
from relaybus.shop.contract import ORDER_REQUEST_AGGREGATE, ORDER_STATUS_AGGREGATE, Line
from relaybus.shop.producers.orders.store import OrderStore, add_products
from relaybus.snowflake import Snowflake

ONE_STATEMENT = "one statement (Outbox.write)"
SKUS = {"bench-w-sku-1": 1299, "bench-w-sku-2": 450, "bench-w-sku-3": 9900}
LINES = [Line(product=sku, quantity=n + 1) for n, sku in enumerate(SKUS)]
# One customer per run: the clean-up removes exactly this run's orders and events.
CUSTOMER = f"bench-w-{uuid.uuid4().hex[:8]}"
SHOP_WRITERS = 8
CLEAN_UP = (
    "DELETE FROM outbox WHERE aggregatetype IN (:req, :st) AND payload->>'customer' = :c",
    "DELETE FROM orders.history WHERE order_id IN "
    "(SELECT id FROM orders.orders WHERE customer = :c)",
    "DELETE FROM orders.orders WHERE customer = :c",
)


class NoEvent(Outbox):
    """An outbox that writes nothing: ``write`` runs the business statement alone,
    ``enqueue`` returns a fresh id. The shop's store with it is the same
    transaction without its events."""

    async def write(  # type: ignore[override]
        self,
        session: AsyncSession,
        statement: BusinessStatement,
        params: Any = None,
        **event: Any,
    ) -> tuple[uuid.UUID, Result[Any]]:
        return uuid7(), await session.execute(statement, params)

    async def enqueue(  # type: ignore[override]
        self, session: AsyncSession, event: Any = None, **fields: Any
    ) -> uuid.UUID:
        return uuid7()


async def clean_up(engine: AsyncEngine) -> None:
    """This run's orders and events gone, the tables vacuumed (each round starts alike)."""
    async with engine.begin() as conn:
        for statement in CLEAN_UP:
            await conn.execute(
                text(statement),
                {"c": CUSTOMER, "req": ORDER_REQUEST_AGGREGATE, "st": ORDER_STATUS_AGGREGATE},
            )
    async with engine.connect() as conn:
        autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await autocommit.execute(text("VACUUM (ANALYZE) outbox, orders.orders, orders.history"))


async def place_orders(engine: AsyncEngine, store: OrderStore, orders: int) -> float:
    """Seconds for ``SHOP_WRITERS`` tasks to commit ``orders`` orders through ``store``."""
    sessions = session_factory(engine)
    ids = Snowflake(worker_id=2)

    async def writer() -> None:
        for _ in range(orders // SHOP_WRITERS):
            async with sessions() as session, session.begin():
                await store.place(session, ids.next_id(), CUSTOMER, LINES, None)

    started = time.monotonic()
    await asyncio.gather(*(writer() for _ in range(SHOP_WRITERS)))
    return time.monotonic() - started


def literal(value: Any, order_id: int) -> str:
    """``value`` (a bound parameter as the driver got it) as SQL for pgbench: the
    order id becomes the per-transaction variable ``:id``, message ids are made by
    the server, everything else is a constant."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == order_id:
        return ":id"
    if value == str(order_id):
        return "CAST(:id AS text)"
    if isinstance(value, uuid.UUID):
        return "gen_random_uuid()"
    if value is None:
        return "NULL"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return "ARRAY[" + ", ".join(literal(v, order_id) for v in value) + "]"
    if not isinstance(value, str):
        value = json.dumps(value) if isinstance(value, dict) else str(value)
    elif value.startswith("{"):
        # pgbench reads ``:name`` as a variable even inside a literal: compact JSON's
        # ``"vip":false`` would become a parameter. The same JSON with ": " is safe.
        with contextlib.suppress(ValueError):  # not JSON: kept as it is
            value = json.dumps(json.loads(value))
    return "'" + value.replace("'", "''") + "'"


def pgbench_transaction(statements: Sequence[tuple[str, Sequence[Any]]], order_id: int) -> str:
    """A pgbench script running ``statements`` (SQL with ``$n`` placeholders and their
    parameters, as captured) as one transaction with a fresh random order id."""
    lines = [r"\set id random(1, 1000000000000000)", "BEGIN;"]
    for sql, params in statements:
        body = re.sub(
            r"\$(\d+)", lambda m, p=params: literal(p[int(m.group(1)) - 1], order_id), sql
        )
        lines.append(" ".join(body.split()) + ";")
    return "\n".join([*lines, "COMMIT;", ""])


async def captured_place(engine: AsyncEngine, store: OrderStore) -> str:
    """The pgbench script of one ``store.place`` call (made for real, then rolled back)."""
    seen: list[tuple[str, Sequence[Any]]] = []

    def capture(
        conn: Any, cursor: Any, sql: str, params: Any, context: Any, executemany: bool
    ) -> None:
        seen.append((sql, tuple(params) if isinstance(params, Sequence) else ()))

    order_id = Snowflake(worker_id=3).next_id()
    event.listen(engine.sync_engine, "before_cursor_execute", capture)
    try:
        async with session_factory(engine)() as session:
            await session.begin()
            await store.place(session, order_id, CUSTOMER, LINES, None)
            await session.rollback()
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", capture)
    return pgbench_transaction(seen, order_id)


async def writers_sweep(
    engine: AsyncEngine, writer_counts: list[int], transactions: int, rounds: int
) -> tuple[list[Comparison], list[dict[str, float]]]:
    """(a): for each writer count, Outbox.write against the INSERT alone."""
    await create_insert_tables(engine)
    comparisons, cells = [], []
    for writers in writer_counts:
        plain = Series(f"insert only, {writers} writers", "tx/s")
        evented = Series(f"insert + event, {writers} writers", "tx/s")
        for _ in range(rounds):
            for series, with_outbox in ((plain, False), (evented, True)):
                await reset_insert_tables(engine)
                seconds = await inserts(engine, transactions, ONE_STATEMENT, with_outbox, writers)
                series.values.append(transactions // writers * writers / seconds)
        print(f"  {writers} writers: insert only {plain.median:,.0f} tx/s, with event "
              f"{evented.median:,.0f} tx/s", flush=True)  # fmt: skip
        comparisons.append(
            Comparison(f"insert + event / insert only, {writers} writers", evented, plain, None)
        )
        cells.append({"writers": writers, "plain": plain.median, "with_event": evented.median})
    return comparisons, cells


async def shop_transaction(
    engine: AsyncEngine, database_url: str, orders: int, rounds: int, pgbench_seconds: int
) -> tuple[list[Comparison], dict[str, str]]:
    """(b): the shop's order transaction with and without its events, in Python and
    as pgbench runs the same SQL."""
    async with session_factory(engine)() as session, session.begin():
        await add_products(session, SKUS)
    stores = {"events": OrderStore(Outbox()), "none": OrderStore(NoEvent())}
    python = {
        "events": Series("order transaction with its 2 events (OrderStore.place)", "tx/s"),
        "none": Series("the same transaction without events", "tx/s"),
    }
    database = {
        "events": Series("with events, same SQL (pgbench)", "tx/s"),
        "none": Series("without events, same SQL (pgbench)", "tx/s"),
    }
    scripts = {k: await captured_place(engine, store) for k, store in stores.items()}
    for _ in range(rounds):
        for key in ("none", "events"):
            await clean_up(engine)
            python[key].values.append(orders / await place_orders(engine, stores[key], orders))
        for key in ("none", "events"):
            await clean_up(engine)
            tps = await pgbench_tps(database_url, scripts[key], [], pgbench_seconds, SHOP_WRITERS)
            database[key].values.append(tps)
        print(f"  shop order: Python {python['events'].values[-1]:,.0f} / "
              f"{python['none'].values[-1]:,.0f} tx/s, pgbench "
              f"{database['events'].values[-1]:,.0f} / {database['none'].values[-1]:,.0f} tx/s",
              flush=True)  # fmt: skip
    await clean_up(engine)
    return [
        Comparison("shop order transaction, with events / without", python["events"],
                   python["none"], 0.9),
        Comparison("shop order transaction, database alone (pgbench, same SQL)",
                   database["events"], database["none"], None),
    ], scripts  # fmt: skip


TYPED_AGGREGATE = "bench-typed"


@declare_event("bench.typed", version=2, aggregate_type=TYPED_AGGREGATE, key="order_id")
class BenchOrderPlaced(BaseModel):
    """The payload the dict variant writes, as an event class (version 2: the
    ``schema_version`` header is written too)."""

    order_id: str
    customer: str
    lines: list[Line]
    amount_cents: int


async def typed_sweep(
    engine: AsyncEngine, transactions: int, rounds: int, writers: int = SHOP_WRITERS
) -> list[Comparison]:
    """(c): ``Outbox.enqueue`` of an event instance against the same payload as a dict
    (with the same header), ``writers`` concurrent writers, one event per transaction."""
    outbox = Outbox()
    lines = [line.model_dump() for line in LINES]
    sessions = session_factory(engine)

    async def run(typed: bool) -> float:
        per_writer = transactions // writers

        async def writer(w: int) -> None:
            for n in range(per_writer):
                key = f"{w}-{n}"
                async with sessions() as session, session.begin():
                    if typed:
                        placed = BenchOrderPlaced(
                            order_id=key, customer=CUSTOMER, lines=LINES, amount_cents=1299
                        )
                        await outbox.enqueue(session, placed)
                    else:
                        await outbox.enqueue(
                            session,
                            aggregate_type=TYPED_AGGREGATE,
                            aggregate_id=key,
                            type="bench.typed",
                            payload={"order_id": key, "customer": CUSTOMER, "lines": lines,
                                     "amount_cents": 1299},
                            headers={"schema_version": "2"},
                        )  # fmt: skip

        began = time.perf_counter()
        await asyncio.gather(*(writer(w) for w in range(writers)))
        return per_writer * writers / (time.perf_counter() - began)

    dicts = Series(f"enqueue, dict payload, {writers} writers", "tx/s")
    typed = Series(f"enqueue, event instance, {writers} writers", "tx/s")
    for round_no in range(rounds):
        pair = [(dicts, False), (typed, True)]
        for series, is_typed in pair if round_no % 2 == 0 else reversed(pair):
            async with engine.begin() as conn:
                await conn.execute(
                    text("DELETE FROM outbox WHERE aggregatetype = :a"), {"a": TYPED_AGGREGATE}
                )
            series.values.append(await run(is_typed))
        print(f"  enqueue: dict {dicts.values[-1]:,.0f} tx/s, event class "
              f"{typed.values[-1]:,.0f} tx/s", flush=True)  # fmt: skip
    async with engine.begin() as conn:
        await conn.execute(
            text("DELETE FROM outbox WHERE aggregatetype = :a"), {"a": TYPED_AGGREGATE}
        )
    return [Comparison("outbox enqueue, event class / dict payload", typed, dicts, 0.9)]


async def main(args: argparse.Namespace) -> None:
    settings = Settings()
    engine = create_engine(settings.database_url, pool_size=max(args.writers) + 2)
    try:
        comparisons, cells = await writers_sweep(
            engine, args.writers, args.transactions, args.rounds
        )
        shop, scripts = await shop_transaction(
            engine, settings.database_url, args.orders, args.rounds, args.pgbench_seconds
        )
        comparisons += shop
        comparisons += await typed_sweep(engine, args.transactions, args.rounds)
    finally:
        async with engine.begin() as conn:  # leave no bench rows for a relay to find
            await conn.execute(text("DROP TABLE IF EXISTS bench_orders"))
            await conn.execute(
                text("DELETE FROM outbox WHERE aggregatetype = :a"), {"a": ORDER_AGGREGATE}
            )
        await engine.dispose()
    params = {"transactions": args.transactions, "writers": args.writers, "orders": args.orders,
              "rounds": args.rounds, "pgbench_seconds": args.pgbench_seconds}  # fmt: skip
    md = write("writes", params, comparisons)
    md += (
        "\nThe SQL of one order transaction as pgbench ran it (captured from a real "
        "`OrderStore.place` call; `:id` is drawn per transaction):\n"
    )
    for key, script in scripts.items():
        md += f"\n{'With its events' if key == 'events' else 'Without events'}:\n\n"
        md += "```sql\n" + script + "```\n"
    amend("writes", md, cells=cells)
    print(md)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--writers", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    p.add_argument("--transactions", type=int, default=6400)
    p.add_argument("--orders", type=int, default=4000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pgbench-seconds", type=int, default=5)
    return p


if __name__ == "__main__":
    asyncio.run(main(parser().parse_args()))
