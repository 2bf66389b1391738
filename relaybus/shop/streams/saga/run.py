"""Running the saga: a faust worker in this process (``relaybus stream saga``)."""

from __future__ import annotations

import asyncio

import faust

from relaybus.brokers.kafka_admin import ensure_topic
from relaybus.brokers.kafka_connection import KafkaTarget
from relaybus.settings import Settings
from relaybus.shop.settings import ShopSettings
from relaybus.shop.streams.saga.agent import CHANGELOG, create_saga_app
from relaybus.shop.topology import ensure_shop_topics


async def ensure_saga_topics(bootstrap: KafkaTarget, shop: ShopSettings) -> None:
    """The shop topics and the table's changelog (compacted, same partition count).

    faust creates the changelog itself, but on a fresh cluster its metadata did not
    see the new topic yet when the first event came: the table reported "changelog
    has 0 partitions" and the agent crashed on every event (and faust acks an event
    whose agent crashed). Created here, before faust starts, it is always there.
    """
    await ensure_shop_topics(bootstrap, shop)
    await ensure_topic(
        bootstrap,
        CHANGELOG,
        shop.shop_partitions,
        shop.shop_replication,
        config={"cleanup.policy": "compact"},
    )


def run_saga(settings: Settings, shop: ShopSettings, loglevel: str = "INFO") -> None:
    """Run the saga until SIGTERM/SIGINT (faust's worker handles both: it commits the
    open transaction and leaves the group). Creates its topics first."""
    asyncio.run(ensure_saga_topics(settings.kafka, shop))
    app = create_saga_app(settings, shop)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
