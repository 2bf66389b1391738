"""Kafka administration: topics (create if missing), offsets, group starts, plain produce."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError


async def ensure_topic(
    bootstrap: str,
    topic: str,
    partitions: int = 3,
    replication: int = 1,
    config: dict[str, str] | None = None,
) -> bool:
    """Create ``topic`` (with topic ``config``) unless it exists; True if this call
    created it. An existing topic's config is left as it is."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if topic in await admin.list_topics():
            return False
        try:
            await admin.create_topics(
                [NewTopic(topic, partitions, replication, topic_configs=config or {})]
            )
        except TopicAlreadyExistsError:
            return False
        return True
    finally:
        await admin.close()


async def list_topics(bootstrap: str) -> set[str]:
    """The names of every topic in the cluster."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def topic_partitions(bootstrap: str, topic: str, timeout: float = 15.0) -> list[int]:
    """Partition numbers of ``topic``, waiting up to ``timeout`` for a new topic to appear."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while True:
            described = await admin.describe_topics([topic])
            parts = sorted(p["partition"] for d in described for p in d.get("partitions", []))
            if parts:
                return parts
            if loop.time() > deadline:
                raise LookupError(f"kafka topic {topic!r} does not exist")
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """The end offset of each partition of ``topic``."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in await topic_partitions(bootstrap, topic)]
        return {tp.partition: end for tp, end in (await consumer.end_offsets(parts)).items()}
    finally:
        await consumer.stop()


async def start_group_at(bootstrap: str, group: str, topic: str, offsets: dict[int, int]) -> None:
    """Commit ``offsets`` (partition -> offset) for a new ``group``: it starts there."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        positions = {TopicPartition(topic, p): o for p, o in offsets.items()}
        consumer.assign(list(positions))
        await consumer.commit(positions)
    finally:
        await consumer.stop()


async def produce_records(
    bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes, dict[str, str]]]
) -> None:
    """Produce (key, value, headers) records in order and wait for all acks."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value, headers in records:
            await producer.send(
                topic, value=value, key=key, headers=[(k, v.encode()) for k, v in headers.items()]
            )
        await producer.flush()
    finally:
        await producer.stop()


async def group_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The offsets ``group`` has committed on ``topic`` (partition -> next offset to
    read); a partition with no commit is left out."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {
        tp.partition: meta.offset
        for tp, meta in committed.items()
        if tp.topic == topic and meta.offset >= 0
    }
