"""``relaybus relay``: the composition root of the outbox relay process."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket

import typer

from outbox.metrics import RelayMetrics
from outbox.notify import OutboxListener
from outbox.relay import Relay, RelayConfig
from outbox.routing import Router
from outbox.store import PostgresOutboxStore
from relaybus.brokers.kafka import KafkaPublisher
from relaybus.brokers.publisher import Publisher
from relaybus.brokers.rabbitmq import RabbitPublisher
from relaybus.db import create_engine
from relaybus.locks.postgres import PostgresLock
from relaybus.settings import Settings

log = logging.getLogger("relaybus.relay")


def build_publishers(settings: Settings, brokers: set[str]) -> dict[str, Publisher]:
    """One publisher per broker that some route names."""
    publishers: dict[str, Publisher] = {}
    if "kafka" in brokers:
        publishers["kafka"] = KafkaPublisher(
            settings.kafka_bootstrap, max_request_size=settings.kafka_max_request_size
        )
    if "rabbitmq" in brokers:
        publishers["rabbitmq"] = RabbitPublisher(settings.rabbitmq_url)
    return publishers


async def run_relay(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT, then hand partitions back and exit cleanly."""
    engine = create_engine(settings.database_url)
    router = Router(settings.routes)
    metrics = RelayMetrics()
    if settings.relay_metrics_port:
        metrics.serve(settings.relay_metrics_port, settings.relay_metrics_host)
    config = RelayConfig(
        partitions=settings.outbox_partitions,
        batch_size=settings.relay_batch_size,
        concurrent_batches=settings.relay_concurrent_batches,
        lease_ttl=settings.relay_lease_ttl,
        poll_interval=settings.relay_poll_interval,
        instance=settings.relay_instance or f"{socket.gethostname()}-{os.getpid()}",
        archive_retention_days=settings.relay_archive_retention_days,
        max_inflight_bytes=settings.relay_max_inflight_bytes,
        listen=settings.relay_listen,
    )
    relay = Relay(
        PostgresOutboxStore(engine, archive=settings.relay_archive),
        PostgresLock(engine),
        build_publishers(settings, router.all_brokers()),
        router,
        config,
        metrics,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    listener = asyncio.create_task(
        OutboxListener(settings.database_url, relay.wake).run()
        if settings.relay_listen
        else stop.wait()
    )
    log.info("relay %s started: %d partitions", config.instance, config.partitions)
    try:
        await relay.run(stop)
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        await engine.dispose()
    log.info("relay %s stopped", config.instance)


def relay(
    instance: str = typer.Option("", help="Instance name (default: host-pid)."),
    metrics_port: int = typer.Option(-1, help="Prometheus /metrics port (0 = off)."),
) -> None:
    """Run the outbox relay: publish committed outbox rows to Kafka / RabbitMQ.

    Routing comes from RELAYBUS_ROUTES; partitions are leased, so run as many relays
    as you like. SIGTERM finishes cleanly.

    Example: RELAYBUS_ROUTES='[{"pattern":"*","brokers":["kafka","rabbitmq"]}]' relaybus relay
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    overrides: dict[str, object] = {}
    if instance:
        overrides["relay_instance"] = instance
    if metrics_port >= 0:
        overrides["relay_metrics_port"] = metrics_port
    settings = Settings(**overrides)  # type: ignore[arg-type]
    asyncio.run(run_relay(settings))
