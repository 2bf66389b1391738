"""The stack's Kafka is a real broker: acks=all produce, committed group consume."""

from __future__ import annotations

import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from relaybus.brokers.kafka_admin import ensure_topic
from relaybus.settings import Settings


async def test_produce_acks_all_and_consume_with_manual_commit(settings: Settings) -> None:
    topic = f"smoke.{uuid.uuid4().hex[:8]}"
    assert await ensure_topic(settings.kafka_bootstrap, topic, partitions=3)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        for i in range(20):
            md = await producer.send_and_wait(topic, f"v{i}".encode(), key=f"k{i % 4}".encode())
            assert md.offset >= 0
    finally:
        await producer.stop()

    group = f"g-{uuid.uuid4().hex[:6]}"
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        seen: list[bytes] = []
        while len(seen) < 20:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                seen += [r.value for r in records if r.value is not None]
        await consumer.commit()
        committed = {tp: await consumer.committed(tp) for tp in consumer.assignment()}
    finally:
        await consumer.stop()
    assert sorted(seen) == sorted(f"v{i}".encode() for i in range(20))
    assert sum(v or 0 for v in committed.values()) == 20
