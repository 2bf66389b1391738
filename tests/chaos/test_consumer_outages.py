"""A worker keeps consuming across a broker restart: it reconnects by itself."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.settings import Settings
from stack.kafka_broker import KafkaCluster
from stack.rabbitmq import RabbitMQ
from stack.settings import StackSettings
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
        await asyncio.to_thread(stop)
        await asyncio.to_thread(start)
        more = [event(f"k{i}", {"n": i}) for i in range(100, 200)]
        await send(settings, broker, route, more)
        await eventually(lambda: applied(200), within=180, what="all 200 after the restart")
