"""``relaybus stream order-status``: the read model's faust worker in this process."""

from __future__ import annotations

import asyncio

import faust

from producers.contract import ORDER_STATUS_EVENTS
from producers.settings import ShopSettings
from producers.topology import ensure_shop_topics
from relaybus.brokers.kafka_admin import ensure_topic, topic_partitions
from relaybus.settings import Settings
from streams.readmodel.agent import APP_ID, CHANGELOG, create_read_model_app


class PartitionsMismatch(RuntimeError):
    """The input topic and the table's changelog have different partition counts."""


async def ensure_read_model_topics(bootstrap: str, shop: ShopSettings) -> int:
    """The shop topics and the table's changelog (compacted), before faust starts
    (the saga's start-up lesson: see ``streams.saga.run``). The changelog gets the
    input topic's actual partition count (faust requires them equal); returns it.
    Raises ``PartitionsMismatch`` if an existing changelog has another count."""
    await ensure_shop_topics(bootstrap, shop)
    partitions = len(await topic_partitions(bootstrap, ORDER_STATUS_EVENTS))
    await ensure_topic(
        bootstrap,
        CHANGELOG,
        partitions,
        shop.shop_replication,
        config={"cleanup.policy": "compact"},
    )
    changelog = len(await topic_partitions(bootstrap, CHANGELOG))
    if changelog != partitions:
        raise PartitionsMismatch(
            f"{ORDER_STATUS_EVENTS} has {partitions} partitions but {CHANGELOG} has "
            f"{changelog}: delete the changelog topic and the consumer group {APP_ID} "
            "(the table is then rebuilt from the topic)"
        )
    return partitions


def run_read_model(settings: Settings, shop: ShopSettings, loglevel: str = "INFO") -> None:
    """Run until SIGTERM/SIGINT (faust commits the open transaction first)."""
    partitions = asyncio.run(ensure_read_model_topics(settings.kafka_bootstrap, shop))
    app = create_read_model_app(settings, shop, partitions)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
