"""Kafka topic administration (create if missing)."""

from __future__ import annotations

import asyncio

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
