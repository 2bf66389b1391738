"""``relaybus stream router``: the composition root of the inventory router."""

from __future__ import annotations

import asyncio
import logging
import signal

from redis.asyncio import Redis

from relaybus.db import create_engine, session_factory
from relaybus.locks.base import Lease, acquire_within
from relaybus.locks.redlock import Redlock
from relaybus.settings import Settings
from relaybus.shop.settings import ShopSettings
from relaybus.shop.streams.sharding.router import InventoryRouter
from relaybus.shop.topology import ensure_shop_topics
from relaybus.streams.runtime.kafka_loop import KafkaStreamRunner

log = logging.getLogger("relaybus.router")
LOCK = "stream:inventory-router"


async def _keep(lock: Redlock, lease: Lease, ttl: float, stop: asyncio.Event) -> bool:
    """Renew the lease every ttl/3 until ``stop``; if it cannot be renewed, set
    ``stop`` and return True (lost)."""
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), ttl / 3)
            return False
        except TimeoutError:
            pass
        renewed = await lock.extend(lease, ttl)
        if renewed is None:
            log.error("router: lost the lease %s (fence %d); stopping", LOCK, lease.fence)
            stop.set()
            return True
        lease = renewed
    return False


async def run_router(settings: Settings, shop: ShopSettings) -> None:
    """Take the router lease (waiting while another router holds it), then route until
    SIGTERM/SIGINT or until the lease is lost (exit 3: a supervisor restarts it)."""
    await ensure_shop_topics(settings.kafka, shop)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    clients = [Redis.from_url(url) for url in settings.redlock_urls]
    engine = create_engine(settings.database_url)
    lock = Redlock(clients)
    lease = None
    try:
        while lease is None and not stop.is_set():
            lease = await acquire_within(lock, LOCK, shop.router_lease_ttl, wait=5.0)
            if lease is None:
                log.info("router: another router holds %s; waiting", LOCK)
        if lease is None:
            return
        log.info("router: holding %s with fence %d", LOCK, lease.fence)
        router = InventoryRouter(
            session_factory(engine),
            settings.kafka,
            partitions=shop.shop_partitions,
            replication=shop.shop_replication,
            fence=lease.fence,
            probes=shop.inventory_ring_probes,
        )
        runner = KafkaStreamRunner(router, settings.kafka, batch_size=500)
        keeper = asyncio.create_task(_keep(lock, lease, shop.router_lease_ttl, stop))
        try:
            await runner.run(stop)
        finally:
            stop.set()
            lost = await keeper
        if lost:
            raise SystemExit(3)
    finally:
        if lease is not None:
            await lock.release(lease)
        await engine.dispose()
        for client in clients:
            await client.aclose()
