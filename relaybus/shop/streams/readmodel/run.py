"""``relaybus stream order-status``: the read model's faust worker in this process."""

from __future__ import annotations

import asyncio
import logging
import time

import faust
from aiokafka.errors import KafkaError

from relaybus.brokers.kafka_admin import ensure_topic, start_group_at, topic_partitions
from relaybus.brokers.kafka_connection import KafkaTarget
from relaybus.settings import Settings
from relaybus.shop.contract import ORDER_STATUS_EVENTS
from relaybus.shop.settings import ShopSettings
from relaybus.shop.streams.readmodel.agent import APP_ID, CHANGELOG, create_read_model_app
from relaybus.shop.topology import ensure_shop_topics

log = logging.getLogger("relaybus.readmodel")


class PartitionsMismatch(RuntimeError):
    """The input topic and the table's changelog have different partition counts."""


async def ensure_read_model_topics(bootstrap: KafkaTarget, shop: ShopSettings) -> int:
    """The shop topics and the table's changelog (compacted), before faust starts
    (the saga's start-up lesson: see ``relaybus.shop.streams.saga.run``). The changelog gets the
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


async def replay_from_start(bootstrap: KafkaTarget, within: float = 120.0) -> None:
    """Point the read model's group at the beginning of its input, so the worker
    re-applies every event on top of the table it recovers from the changelog.

    The fold is idempotent, so this only repairs: an update whose changelog record
    was lost while its offset was committed (faust's transactional commit was seen
    doing that, see ``relaybus.shop.streams.readmodel.agent``) is applied again. The commit is
    refused while a crashed worker is still a group member (until its session times
    out), so it is retried until ``within`` seconds pass."""
    numbers = await topic_partitions(bootstrap, ORDER_STATUS_EVENTS)
    deadline = time.monotonic() + within
    while True:
        try:
            await start_group_at(bootstrap, APP_ID, ORDER_STATUS_EVENTS, dict.fromkeys(numbers, 0))
            return
        except KafkaError as err:
            if time.monotonic() > deadline:
                raise
            log.info("read model: group still has members (%r); retrying the rewind", err)
            await asyncio.sleep(1.0)


def run_read_model(settings: Settings, shop: ShopSettings, loglevel: str = "INFO") -> None:
    """Rewind to the start of the input (``replay_from_start``), then run until
    SIGTERM/SIGINT."""
    partitions = asyncio.run(ensure_read_model_topics(settings.kafka, shop))
    asyncio.run(replay_from_start(settings.kafka))
    app = create_read_model_app(settings, shop, partitions)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
