"""The shop's Kafka topics, created up front with one partition count for all."""

from __future__ import annotations

from relaybus.brokers.kafka_admin import ensure_topic
from relaybus.brokers.kafka_connection import KafkaTarget
from relaybus.shop.contract import ALL_TOPICS
from relaybus.shop.settings import ShopSettings


async def ensure_shop_topics(bootstrap: KafkaTarget, shop: ShopSettings) -> list[str]:
    """Create every shop topic that is missing, each with ``shop_partitions``
    partitions. Returns the ones this call created.

    Equal partition counts are what co-partition them: the relay (aiokafka's
    partitioner) and faust both place a key by ``murmur2(key) % partitions``, so an
    order's events and its saga's table entry share a partition number. A topic
    auto-created by a first publish would get the broker's default (1) instead.
    """
    created = []
    for topic in ALL_TOPICS:
        if await ensure_topic(bootstrap, topic, shop.shop_partitions, shop.shop_replication):
            created.append(topic)
    return created
