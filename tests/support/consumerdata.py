"""Sending test messages to the real brokers and reading what consumers did."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aiokafka import AIOKafkaProducer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.brokers.rabbitmq import EXCHANGE
from relaybus.consumers.app import ConsumerApp
from relaybus.consumers.worker import Worker
from relaybus.ids import uuid7
from relaybus.message import Message
from relaybus.settings import Settings
from tests.support.consumer_apps import EFFECTS_DDL, TEST_TYPE


@dataclass(frozen=True)
class Raw:
    """A record as a plain producer writes it: any bytes, any headers."""

    key: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.headers.get("id", "")


def event(key: str, data: Any, id: uuid.UUID | None = None, type: str = TEST_TYPE) -> Raw:
    """A well-formed relaybus message (headers exactly as the relay sends them)."""
    body = json.dumps(data, separators=(",", ":")).encode()
    message = Message(type=type, aggregatetype="test", aggregateid=key, payload=body)
    headers = message.headers()
    if id is not None:
        headers = {**headers, "id": str(id)}
    return Raw(key, body, dict(headers))


async def kafka_send(bootstrap: str, topic: str, records: Sequence[Raw]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        acks = [
            await producer.send(
                topic,
                value=r.body,
                key=r.key.encode(),
                headers=[(k, v.encode()) for k, v in r.headers.items()],
            )
            for r in records
        ]
        await asyncio.gather(*acks)
    finally:
        await producer.stop()


async def rabbit_send(url: str, routing_key: str, records: Sequence[Raw]) -> None:
    """Publish to ``relaybus.events`` with confirms (AMQP message_id/type from headers)."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(
            EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        await asyncio.gather(
            *(
                exchange.publish(
                    aio_pika.Message(
                        body=r.body,
                        headers=dict[str, Any](r.headers),
                        message_id=r.headers.get("id") or None,
                        type=r.headers.get("type") or None,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=routing_key,
                )
                for r in records
            )
        )
    finally:
        await connection.close()


async def send(settings: Settings, broker: str, source: str, records: Sequence[Raw]) -> None:
    """To the Kafka topic ``source``, or to RabbitMQ with routing key ``source``."""
    if broker == "kafka":
        await kafka_send(settings.kafka_bootstrap, source, records)
    else:
        await rabbit_send(settings.rabbitmq, source, records)


async def prepare_effects(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(EFFECTS_DDL))


async def effects(engine: AsyncEngine, consumer: str) -> list[dict[str, Any]]:
    """Effect rows of ``consumer`` in the order they were written (``at``: when,
    epoch seconds)."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT message_id, key, n, attempt, extract(epoch FROM at)::float8 AS at "
                "FROM consumer_effects WHERE consumer = :c ORDER BY at"
            ),
            {"c": consumer},
        )
        return [dict(r._mapping) for r in rows]


async def effect_count(engine: AsyncEngine, consumer: str) -> tuple[int, int]:
    """(rows, distinct message ids) of ``consumer``."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT count(*), count(DISTINCT message_id) FROM consumer_effects "
                    "WHERE consumer = :c"
                ),
                {"c": consumer},
            )
        ).one()
    return int(row[0]), int(row[1])


@asynccontextmanager
async def running(app: ConsumerApp, settings: Settings) -> AsyncIterator[Worker]:
    """Run ``app`` in this event loop until the block ends; yields once it consumes."""
    worker = Worker(app, settings)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        done, _ = await asyncio.wait(
            [task, asyncio.ensure_future(worker.ready())],
            timeout=90,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if task in done:
            task.result()  # the worker died while starting: show why
        assert done, "worker not consuming within 90s"
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, 90)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid7().hex[-10:]}"
