"""A broker stopped for 15 s while writes continue: the outbox keeps accepting writes,
the relay backs off, and after the broker returns the backlog drains with nothing lost."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import aio_pika
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.brokers.rabbitmq import EXCHANGE
from relaybus.ids import uuid7
from relaybus.settings import Settings
from relaybus.stack.kafka_broker import KafkaCluster
from relaybus.stack.rabbitmq import RabbitMQ
from relaybus.stack.settings import StackSettings
from tests.chaos.faults import stopped
from tests.support.outboxdata import Event, enqueue, make_topic, read_topic, wait_drained
from tests.support.relayproc import relay_fleet

# Longer than the relay's longest backoff (10 s), so it waits at its cap, then recovers.
OUTAGE_S = 15.0


class Writer:
    """Commits one small event every 20 ms until stopped; records ids and timings."""

    def __init__(self, engine: AsyncEngine, agg: str, event_type: str) -> None:
        self.engine, self.agg, self.type = engine, agg, event_type
        self.ids: list[uuid.UUID] = []
        self.written_at: list[float] = []
        self._stop = asyncio.Event()

    async def run(self) -> None:
        n = 0
        while not self._stop.is_set():
            event = Event(f"k{n % 10}", self.type, {"n": n})
            self.ids += await enqueue(self.engine, self.agg, [event])
            self.written_at.append(time.monotonic())
            n += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.02)

    def stop(self) -> None:
        self._stop.set()

    def written_between(self, start: float, end: float) -> int:
        return sum(start <= t <= end for t in self.written_at)


async def _outage(writer: Writer, stop: Callable[[], object], start: Callable[[], object]) -> int:
    """Stop a broker, keep writing for OUTAGE_S, start it again; return writes during it."""
    task = asyncio.create_task(writer.run())
    try:
        async with stopped(stop, start):
            down_at = time.monotonic()
            # The scenario itself is "down for 15 s while writes continue": wait it out.
            await asyncio.sleep(OUTAGE_S)
            up_at = time.monotonic()
        return writer.written_between(down_at, up_at)
    finally:
        writer.stop()
        await task


async def test_kafka_down_15s_writes_continue_and_backlog_drains(
    settings: Settings, engine: AsyncEngine, tmp_path: Path
) -> None:
    agg = f"kdown{uuid7().hex[-10:]}"
    topic = await make_topic(settings.kafka_bootstrap, agg)
    kafka = KafkaCluster.single(StackSettings())
    writer = Writer(engine, agg, "outage.kafka")
    with relay_fleet(tmp_path, [{"pattern": "*", "brokers": ["kafka"]}]) as fleet:
        fleet.start("r1")
        during = await _outage(writer, kafka.stop, kafka.start)
        await wait_drained(engine, agg, within=180)
    assert during > 50, f"only {during} writes succeeded while Kafka was down"
    records = await read_topic(settings.kafka_bootstrap, topic)
    assert {r.headers["id"] for r in records} == {str(i) for i in writer.ids}
    print(f"\nKafka outage: {during} writes during {OUTAGE_S:.0f}s, {len(writer.ids)} delivered")


async def test_rabbitmq_down_15s_writes_continue_and_backlog_drains(
    settings: Settings, engine: AsyncEngine, tmp_path: Path
) -> None:
    agg = f"rdown{uuid7().hex[-10:]}"
    event_type = f"{agg}.tick"
    queue_name = f"test.{agg}"
    connection = await aio_pika.connect(settings.rabbitmq)
    channel = await connection.channel()
    exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(
        queue_name, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await queue.bind(exchange, routing_key=event_type)
    await connection.close()

    rabbit = RabbitMQ(StackSettings())
    writer = Writer(engine, agg, event_type)
    with relay_fleet(tmp_path, [{"pattern": "*", "brokers": ["rabbitmq"]}]) as fleet:
        fleet.start("r1")
        during = await _outage(writer, rabbit.stop, rabbit.start)
        await wait_drained(engine, agg, within=180)
    assert during > 50, f"only {during} writes succeeded while RabbitMQ was down"

    connection = await aio_pika.connect(settings.rabbitmq)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, passive=True)
        seen: set[str] = set()
        async with queue.iterator() as it:
            async for msg in it:
                await msg.ack()
                seen.add(str(msg.message_id))
                if seen >= {str(i) for i in writer.ids}:
                    break
        await queue.delete(if_unused=False, if_empty=False)
    finally:
        await connection.close()
    assert seen == {str(i) for i in writer.ids}
    print(f"\nRabbitMQ outage: {during} writes during {OUTAGE_S:.0f}s, {len(seen)} delivered")
