"""``Outbox.write`` (business write + event in one statement) and NOTIFY-while-waiting."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import BigInteger, Column, MetaData, Table, Text, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.db import session_factory
from relaybus.ids import uuid7
from relaybus.outbox.notify import CHANNEL, asyncpg_dsn
from relaybus.outbox.writer import Outbox, OutboxError
from relaybus.settings import Settings
from tests.support.outboxdata import Event, enqueue, make_topic, wait_drained
from tests.support.poll import eventually
from tests.support.relayproc import relay_fleet

KAFKA_ONLY = [{"pattern": "*", "brokers": ["kafka"]}]
orders = Table(
    "write_test_orders",
    MetaData(),
    Column("id", BigInteger, primary_key=True),
    Column("status", Text, nullable=False),
)


@pytest.fixture(autouse=True)
async def orders_table(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(orders.metadata.create_all)


def _agg() -> str:
    return f"w{uuid7().hex[-12:]}"


async def _events(engine: AsyncEngine, agg: str) -> list[tuple[str, str, object, object]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT aggregateid, type, payload, headers FROM outbox "
                "WHERE aggregatetype = :a ORDER BY sequence"
            ),
            {"a": agg},
        )
        return [tuple(r) for r in rows]


async def test_write_commits_business_row_and_event_together(engine: AsyncEngine) -> None:
    agg, outbox, sessions = _agg(), Outbox(), session_factory(engine)
    order_id = uuid7().int >> 66  # any fresh bigint
    async with sessions() as session, session.begin():
        message_id, result = await outbox.write(
            session,
            insert(orders).values(id=order_id, status="new").returning(orders.c.id),
            aggregate_type=agg,
            aggregate_id=str(order_id),
            type="order.created",
            payload={"id": order_id},
        )
        assert result.scalar_one() == order_id
        _, updated = await outbox.write(
            session,
            update(orders).where(orders.c.id == order_id).values(status="paid"),
            aggregate_type=agg,
            aggregate_id=str(order_id),
            type="order.paid",
            payload={"id": order_id},
            headers={"correlation_id": "corr-7"},
        )
        assert updated.rowcount == 1  # the business statement's own count, not the event's
        # Columns taken from the parameters, as session.execute(insert(t), row) does.
        await outbox.write(
            session,
            insert(orders),
            {"id": order_id + 1, "status": "new"},
            aggregate_type=agg,
            aggregate_id=str(order_id + 1),
            type="order.created",
            payload={"id": order_id + 1},
        )
    async with engine.connect() as conn:
        status = await conn.scalar(select(orders.c.status).where(orders.c.id == order_id))
        event_id = await conn.scalar(
            text("SELECT id FROM outbox WHERE aggregatetype = :a AND type = 'order.created'"),
            {"a": agg},
        )
        second = await conn.scalar(select(orders.c.status).where(orders.c.id == order_id + 1))
    assert status == "paid"
    assert second == "new"
    assert event_id == message_id
    assert await _events(engine, agg) == [
        (str(order_id), "order.created", {"id": order_id}, {}),
        (str(order_id), "order.paid", {"id": order_id}, {"correlation_id": "corr-7"}),
        (str(order_id + 1), "order.created", {"id": order_id + 1}, {}),
    ]


async def test_write_rolled_back_or_refused_leaves_neither(engine: AsyncEngine) -> None:
    agg, outbox, sessions = _agg(), Outbox(max_payload_bytes=100), session_factory(engine)
    order_id = uuid7().int >> 66

    async def write(payload: object, then_fail: bool) -> None:
        async with sessions() as session, session.begin():
            await outbox.write(
                session,
                insert(orders).values(id=order_id, status="new"),
                aggregate_type=agg,
                aggregate_id=str(order_id),
                type="order.created",
                payload=payload,
            )
            if then_fail:
                raise RuntimeError("business rule failed after the write")

    with pytest.raises(RuntimeError):
        await write({"id": order_id}, then_fail=True)
    with pytest.raises(OutboxError, match="over the 100-byte cap"):
        await write({"pad": "x" * 200}, then_fail=False)
    async with engine.connect() as conn:
        assert await conn.scalar(select(orders.c.id).where(orders.c.id == order_id)) is None
    assert await _events(engine, agg) == []


async def _no_live_waiters(engine: AsyncEngine) -> bool:
    async with engine.connect() as conn:
        live = await conn.scalar(
            text("SELECT count(*) FROM outbox_waiters WHERE expires_at > now()")
        )
    return live == 0


async def test_writer_notifies_only_while_a_relay_waits(
    settings: Settings, engine: AsyncEngine
) -> None:
    """A commit NOTIFYs iff an unexpired ``outbox_waiters`` row exists, with the
    row's partition as the payload (the relay wakes only that partition's drainer).

    Notifications from one session arrive in commit order, so a sentinel NOTIFY sent
    after the insert proves whether the insert's NOTIFY came (no waiting on a clock).
    """
    await eventually(lambda: _no_live_waiters(engine), within=30, what="no relay waiting")
    agg, received = _agg(), asyncio.Queue[str]()
    listener = await asyncpg.connect(asyncpg_dsn(settings.database_url))
    writer = await asyncpg.connect(asyncpg_dsn(settings.database_url))
    await listener.add_listener(CHANNEL, lambda *args: received.put_nowait(args[3]))

    async def commit_event_then_sentinel(sentinel: str) -> list[str]:
        await enqueue(engine, agg, [Event("k", "notify.test", {})])
        await writer.execute(f"NOTIFY {CHANNEL}, '{sentinel}'")
        seen: list[str] = []
        async with asyncio.timeout(60):  # the sentinel follows within a minute, or fail
            while not seen or seen[-1] != sentinel:
                seen.append(await received.get())
        return seen[:-1]

    try:
        assert await commit_event_then_sentinel("s1") == []
        instance = f"test-{agg}"
        await writer.execute(
            "INSERT INTO outbox_waiters VALUES ($1, now() + interval '1 minute')", instance
        )
        notified = await commit_event_then_sentinel("s2")
        partition = await writer.fetchval(
            "SELECT partition FROM outbox WHERE aggregatetype = $1 ORDER BY sequence DESC LIMIT 1",
            agg,
        )
        assert notified == [str(partition)]  # the payload names the row's partition
        await writer.execute(
            "UPDATE outbox_waiters SET expires_at = now() - interval '1 second' "
            "WHERE instance = $1",
            instance,
        )
        assert await commit_event_then_sentinel("s3") == []
    finally:
        await writer.execute("DELETE FROM outbox_waiters WHERE instance LIKE 'test-%'")
        await writer.execute("DELETE FROM outbox WHERE aggregatetype = $1", agg)
        await listener.close()
        await writer.close()


async def test_idle_relay_is_woken_by_notify_and_unregisters_on_sigterm(
    settings: Settings, engine: AsyncEngine, tmp_path: Path
) -> None:
    """With polling every 10 minutes, only a NOTIFY can make the relay publish."""
    agg = _agg()
    await make_topic(settings.kafka_bootstrap, agg)
    with relay_fleet(tmp_path, KAFKA_ONLY, RELAYBUS_RELAY_POLL_INTERVAL="600") as fleet:
        relay = fleet.start(f"idle-{agg}")

        async def waiting() -> bool:
            async with engine.connect() as conn:
                return bool(
                    await conn.scalar(
                        text(
                            "SELECT count(*) FROM outbox_waiters "
                            "WHERE instance = :i AND expires_at > now()"
                        ),
                        {"i": relay.name},
                    )
                )

        await eventually(waiting, within=60, what="idle relay registered for NOTIFY")
        await enqueue(engine, agg, [Event("k", "notify.wake", {"n": 1})])
        await wait_drained(engine, agg, within=60)
        relay.signal(signal.SIGTERM)
        assert not await waiting(), json.dumps(fleet.logs())
