"""``relaybus stream admission``: the composition root of one admission process."""

from __future__ import annotations

import asyncio
import logging
import signal

from redis.asyncio import Redis

from relaybus.settings import Settings
from relaybus.shop.settings import ShopSettings
from relaybus.shop.streams.admission.limits import RedisAdmission
from relaybus.shop.streams.admission.processor import AdmissionProcessor
from relaybus.shop.topology import ensure_shop_topics
from relaybus.streams.runtime.kafka_loop import KafkaStreamRunner

log = logging.getLogger("relaybus.admission")


async def run_admission(settings: Settings, shop: ShopSettings) -> None:
    """Run until SIGTERM/SIGINT: the batch in hand is sent and committed first."""
    await ensure_shop_topics(settings.kafka, shop)
    client = Redis.from_url(settings.redis_url)
    processor = AdmissionProcessor(RedisAdmission(client, shop.admission_decision_ttl), shop)
    runner = KafkaStreamRunner(processor, settings.kafka)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("admission: limits %s, %s, %s", processor.user, processor.ip, processor.all)
    try:
        await runner.run(stop)
    finally:
        await client.aclose()
