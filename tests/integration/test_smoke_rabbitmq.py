"""The stack's RabbitMQ is a real broker: confirmed publish, manual-ack consume."""

from __future__ import annotations

import asyncio
import uuid

import aio_pika

from relaybus.settings import Settings


async def test_publish_with_confirms_and_consume_with_manual_ack(settings: Settings) -> None:
    connection = await aio_pika.connect_robust(settings.rabbitmq)
    try:
        channel = await connection.channel(publisher_confirms=True)
        name = f"smoke.{uuid.uuid4().hex[:8]}"
        queue = await channel.declare_queue(
            name, durable=True, arguments={"x-queue-type": "quorum"}
        )
        for i in range(10):
            confirm = await channel.default_exchange.publish(
                aio_pika.Message(f"m{i}".encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=name,
            )
            assert confirm is not None  # a broker ack (publisher confirm)

        got: list[bytes] = []
        await channel.set_qos(prefetch_count=5)
        async with queue.iterator() as it:
            async for message in it:
                got.append(message.body)
                await message.ack()
                if len(got) == 10:
                    break
        assert got == [f"m{i}".encode() for i in range(10)]
        # Everything acked: nothing left to redeliver.
        declared = await channel.declare_queue(name, durable=True, passive=True)
        for _ in range(50):
            if declared.declaration_result.message_count == 0:
                break
            await asyncio.sleep(0.1)
            declared = await channel.declare_queue(name, durable=True, passive=True)
        assert declared.declaration_result.message_count == 0
        await queue.delete(if_unused=False, if_empty=False)
    finally:
        await connection.close()
