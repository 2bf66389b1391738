"""A worker keeps consuming across a broker restart: it reconnects by itself."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.consumers.worker import Worker
from relaybus.settings import Settings
from relaybus.stack.kafka_broker import KafkaCluster
from relaybus.stack.rabbitmq import RabbitMQ
from relaybus.stack.settings import StackSettings
from tests.chaos.faults import stopped
from tests.support.consumer_apps import make_app
from tests.support.consumerdata import effect_count, event, running, send, unique
from tests.support.poll import eventually

pytestmark = pytest.mark.usefixtures("effects_table")


@pytest.mark.parametrize("broker", ["kafka", "rabbitmq"])
async def test_worker_reconnects_after_broker_restart(
    broker: str, settings: Settings, engine: AsyncEngine
) -> None:
    name = unique("restart")
    source, route = (f"t.{name}", f"t.{name}") if broker == "kafka" else (f"q.{name}", f"rk.{name}")
    app = make_app(name, broker=broker, topic_or_queue=source, binding=route)
    if broker == "kafka":
        service = KafkaCluster.single(StackSettings())
        stop, start = service.stop, service.start
    else:
        rabbit = RabbitMQ(StackSettings())
        stop, start = rabbit.stop, rabbit.start
    async with running(app, settings):
        await send(settings, broker, route, [event(f"k{i}", {"n": i}) for i in range(100)])

        async def applied(n: int) -> bool:
            return await effect_count(engine, name) == (n, n)

        await eventually(lambda: applied(100), within=60, what="first 100 applied")
        async with stopped(stop, start):
            pass
        more = [event(f"k{i}", {"n": i}) for i in range(100, 200)]
        await send(settings, broker, route, more)
        await eventually(lambda: applied(200), within=180, what="all 200 after the restart")


async def test_a_kafka_worker_started_during_an_outage_waits_for_kafka(
    settings: Settings, engine: AsyncEngine
) -> None:
    """Started while Kafka is down, a worker waits for it (it used to exit with a
    traceback at start), then consumes what is sent once Kafka is back."""
    name = unique("startdown")
    app = make_app(name, broker="kafka", topic_or_queue=f"t.{name}")
    kafka = KafkaCluster.single(StackSettings())
    await asyncio.to_thread(kafka.stop)
    worker = Worker(app, settings)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        try:

            async def waiting() -> bool:
                return not task.done() and worker.runners[0].producer is None

            await eventually(waiting, within=10, what="the worker waiting for Kafka")
            await asyncio.sleep(2.0)  # the outage lasts past a few of its attempts
            assert not task.done(), "the worker exited while Kafka was down"
        finally:
            await asyncio.to_thread(kafka.start)
        await asyncio.wait_for(worker.ready(), 120)
        await send(settings, "kafka", f"t.{name}", [event(f"k{i}", {"n": i}) for i in range(20)])

        async def applied() -> bool:
            return await effect_count(engine, name) == (20, 20)

        await eventually(applied, within=60, what="all 20 applied")
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
