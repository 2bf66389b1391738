"""Taps: read what actually reached a broker, independently of any relaybus consumer.

Used by the demo report and by tests that check a publisher's output with a client
other than the publisher's own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aio_pika
from aiokafka import TopicPartition

from relaybus.brokers.kafka_admin import committed_reader, topic_partitions
from relaybus.brokers.kafka_connection import KafkaTarget
from relaybus.brokers.rabbitmq import EXCHANGE


@dataclass(frozen=True)
class Received:
    """A message as read off a broker: where from, key, headers, body."""

    broker: str
    source: str
    key: str | None
    headers: dict[str, str]
    body: bytes


@asynccontextmanager
async def kafka_tap(bootstrap: KafkaTarget, topic: str) -> AsyncIterator[asyncio.Queue[Received]]:
    """Yield a queue of records appended to ``topic`` after the tap was opened.

    Starts at the end offsets of every partition, so only new records arrive; no
    consumer group (nothing is committed).
    """
    consumer = committed_reader(bootstrap)
    await consumer.start()
    queue: asyncio.Queue[Received] = asyncio.Queue()
    try:
        partitions = [TopicPartition(topic, p) for p in await topic_partitions(bootstrap, topic)]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        for tp, offset in ends.items():
            consumer.seek(tp, offset)

        async def pump() -> None:
            async for rec in consumer:
                queue.put_nowait(
                    Received(
                        "kafka",
                        f"{rec.topic}[{rec.partition}]@{rec.offset}",
                        rec.key.decode() if rec.key is not None else None,
                        {k: v.decode() for k, v in rec.headers},
                        rec.value or b"",
                    )
                )

        task = asyncio.create_task(pump())
        try:
            yield queue
        finally:
            task.cancel()
    finally:
        await consumer.stop()


@asynccontextmanager
async def rabbit_tap(url: str, binding: str) -> AsyncIterator[asyncio.Queue[Received]]:
    """Yield a queue of messages routed to a private queue bound with ``binding``.

    The queue is exclusive and auto-deleted: it exists only while the tap is open.
    """
    connection = await aio_pika.connect_robust(url)
    queue: asyncio.Queue[Received] = asyncio.Queue()
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        amqp_queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await amqp_queue.bind(exchange, routing_key=binding)

        async def on_message(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
            async with msg.process():
                headers = {k: _text(v) for k, v in (msg.headers or {}).items()}
                queue.put_nowait(
                    Received("rabbitmq", amqp_queue.name, msg.routing_key, headers, msg.body)
                )

        await amqp_queue.consume(on_message)
        yield queue
    finally:
        await connection.close()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
