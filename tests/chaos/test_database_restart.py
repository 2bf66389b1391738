"""PostgreSQL restarted under a running relay and a running worker: both carry on.

Their pools hold connections the restart broke. The first statement on one fails,
the pool then replaces every connection, and the unit of work is retried (relay
drainers and coordinator, consumers' retry policy): nothing is lost.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.brokers.kafka_admin import list_topics
from relaybus.ids import uuid7
from relaybus.settings import Settings
from relaybus.stack.postgres import Postgres
from relaybus.stack.settings import StackSettings
from tests.chaos.faults import stopped
from tests.support.consumer_apps import make_app
from tests.support.consumerdata import effect_count, event, running, send, unique
from tests.support.outboxdata import Event, enqueue, make_topic, read_topic, wait_drained
from tests.support.poll import eventually
from tests.support.relayproc import relay_fleet


async def restart_database(engine: AsyncEngine) -> None:
    """Stop and start the stack's PostgreSQL; drop this test's own broken connections."""
    postgres = Postgres(StackSettings())
    async with stopped(postgres.stop, postgres.start):
        pass
    await engine.dispose()


async def test_relay_publishes_across_a_database_restart(
    settings: Settings, engine: AsyncEngine, tmp_path: Path
) -> None:
    agg = f"pgrestart{uuid7().hex[-10:]}"
    topic = await make_topic(settings.kafka_bootstrap, agg)
    with relay_fleet(tmp_path, [{"pattern": "*", "brokers": ["kafka"]}]) as fleet:
        fleet.start("r1")
        before = await enqueue(
            engine, agg, [Event(f"k{n % 10}", "pg.tick", {"n": n}) for n in range(50)]
        )
        await wait_drained(engine, agg, within=60)
        await restart_database(engine)
        after = await enqueue(
            engine, agg, [Event(f"k{n % 10}", "pg.tick", {"n": n}) for n in range(50, 100)]
        )
        await wait_drained(engine, agg, within=120)
    records = await read_topic(settings.kafka_bootstrap, topic)
    assert {r.headers["id"] for r in records} == {str(i) for i in before + after}


@pytest.mark.usefixtures("effects_table")
async def test_worker_applies_across_a_database_restart(
    settings: Settings, engine: AsyncEngine
) -> None:
    name = unique("pgrestart")
    app = make_app(name, broker="kafka", topic_or_queue=f"t.{name}")
    async with running(app, settings):

        async def applied(n: int) -> bool:
            return await effect_count(engine, name) == (n, n)

        await send(settings, "kafka", f"t.{name}", [event(f"k{i}", {"n": i}) for i in range(100)])
        await eventually(lambda: applied(100), within=60, what="first 100 applied")
        await restart_database(engine)
        more = [event(f"k{i}", {"n": i}) for i in range(100, 200)]
        await send(settings, "kafka", f"t.{name}", more)
        await eventually(lambda: applied(200), within=120, what="all 200 after the restart")


async def test_a_worker_waits_out_its_database_instead_of_dead_lettering(
    settings: Settings, engine: AsyncEngine
) -> None:
    """Messages arriving while the worker's own database is down for longer than their
    whole retry budget (3 attempts, 1.4 s of delays) wait for it: every one applied
    once it is back, none dead-lettered. (They used to go to the DLQ with
    max-attempts: the outage was charged to the messages.)"""
    name = unique("pgdown")
    topic = f"t.{name}"
    app = make_app(name, broker="kafka", topic_or_queue=topic)
    postgres = Postgres(StackSettings())
    async with running(app, settings) as worker:
        await asyncio.to_thread(postgres.stop)
        try:
            await send(settings, "kafka", topic, [event(f"k{i}", {"n": i}) for i in range(50)])

            async def tried() -> bool:
                # Attempts that met the database down (counted apart since the fix).
                seen = worker.runners[0].processor.stats
                return seen["failed"] + seen["db-unavailable"] >= 3

            await eventually(tried, within=60, what="attempts met the database down")
            await asyncio.sleep(3.0)  # the outage outlasts the retry budget: the scenario
        finally:
            await asyncio.to_thread(postgres.start)
            await engine.dispose()

        async def applied() -> bool:
            return await effect_count(engine, name) == (50, 50)

        await eventually(applied, within=120, what="all 50 applied after the outage")
        stats = dict(worker.runners[0].processor.stats)
    assert stats.get("dead", 0) == 0, stats
    dlq = f"{topic}.dlq"
    if dlq in await list_topics(settings.kafka_bootstrap):
        assert await read_topic(settings.kafka_bootstrap, dlq) == []
