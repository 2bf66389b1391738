"""``relaybus relay``: the composition root of the outbox relay process."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from enum import StrEnum

import typer

from relaybus.brokers.kafka import KafkaPublisher, prefixed_topic
from relaybus.brokers.publisher import Publisher
from relaybus.brokers.rabbitmq import RabbitPublisher
from relaybus.db import create_engine
from relaybus.locks.postgres import PostgresLock
from relaybus.outbox.metrics import RelayMetrics
from relaybus.outbox.notify import OutboxListener
from relaybus.outbox.relay import Relay, RelayConfig
from relaybus.outbox.routed import RoutedPublisher
from relaybus.outbox.routing import Router
from relaybus.outbox.store import RELAY_SESSION_SETTINGS, PostgresOutboxStore
from relaybus.outbox.wal_relay import WalRelay, WalRelayConfig
from relaybus.outbox.wal_store import WalRelayStore
from relaybus.outbox.wal_stream import WalStream, libpq_dsn
from relaybus.settings import Settings

log = logging.getLogger("relaybus.relay")


def build_publishers(settings: Settings, brokers: set[str]) -> dict[str, Publisher]:
    """One publisher per broker that some route names."""
    publishers: dict[str, Publisher] = {}
    if "kafka" in brokers:
        publishers["kafka"] = KafkaPublisher(
            settings.kafka,
            prefixed_topic(settings.kafka_topic_prefix),
            max_request_size=settings.kafka_max_request_size,
            request_timeout_ms=settings.kafka_request_timeout_ms,
            stall_after=settings.kafka_stall_after,
        )
    if "rabbitmq" in brokers:
        publishers["rabbitmq"] = RabbitPublisher(settings.rabbitmq)
    return publishers


def _metrics(settings: Settings) -> RelayMetrics:
    """The relay's metrics, served on ``/metrics`` if a port is set."""
    metrics = RelayMetrics()
    if settings.relay_metrics_port:
        metrics.serve(settings.relay_metrics_port, settings.relay_metrics_host)
    return metrics


def _instance(settings: Settings) -> str:
    return settings.relay_instance or f"{socket.gethostname()}-{os.getpid()}"


def _stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (a clean stop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def run_relay(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT, then hand partitions back and exit cleanly."""
    engine = create_engine(settings.database_url, server_settings=RELAY_SESSION_SETTINGS)
    router = Router(settings.routes)
    metrics = _metrics(settings)
    config = RelayConfig(
        partitions=settings.outbox_partitions,
        batch_size=settings.relay_batch_size,
        concurrent_batches=settings.relay_concurrent_batches,
        lease_ttl=settings.relay_lease_ttl,
        poll_interval=settings.relay_poll_interval,
        instance=_instance(settings),
        archive_retention_days=settings.relay_archive_retention_days,
        backlog_interval=settings.relay_backlog_interval,
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
    stop = _stop_on_signals()
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


async def run_wal_relay(settings: Settings) -> None:
    """The WAL relay (``--source wal``) until SIGTERM/SIGINT: finish the batch in
    hand, confirm it, hand the slot's lease back."""
    engine = create_engine(settings.database_url)
    router = Router(settings.routes)
    metrics = _metrics(settings)
    config = WalRelayConfig(
        slot=settings.relay_wal_slot,
        publication=settings.relay_wal_publication,
        batch_size=settings.relay_batch_size,
        lease_ttl=settings.relay_lease_ttl,
        instance=_instance(settings),
        max_buffer_bytes=settings.relay_max_inflight_bytes,
        delete_published=settings.relay_wal_delete_published,
    )
    dsn = libpq_dsn(settings.database_url)
    store = WalRelayStore(engine)
    relay = WalRelay(
        lambda: WalStream(
            dsn, config.slot, config.publication, max_buffer_bytes=config.max_buffer_bytes
        ),
        store,
        PostgresLock(engine),
        RoutedPublisher(build_publishers(settings, router.all_brokers()), router, metrics),
        config,
        metrics,
    )
    stop = _stop_on_signals()
    try:
        if await store.ensure_publication(config.publication):
            log.warning("created publication %s (inserts into outbox)", config.publication)
        log.info("wal relay %s started: slot %s", config.instance, config.slot)
        await relay.run(stop)
    finally:
        await engine.dispose()
    log.info("wal relay %s stopped", config.instance)


class Source(StrEnum):
    poll = "poll"
    wal = "wal"


def relay(
    instance: str = typer.Option("", help="Instance name (default: host-pid)."),
    metrics_port: int = typer.Option(-1, help="Prometheus /metrics port (0 = off)."),
    source: Source | None = typer.Option(
        None,
        help="poll: query the outbox table (default, RELAYBUS_RELAY_SOURCE); "
        "wal: stream its inserts from a logical replication slot (docs/cdc.md).",
    ),
) -> None:
    """Run the outbox relay: publish committed outbox rows to Kafka / RabbitMQ.

    Routing comes from RELAYBUS_ROUTES. The polling relay leases partitions, so run
    as many as you like; the WAL relay has one active process per slot, the others
    wait as standbys. SIGTERM finishes cleanly.

    Example: RELAYBUS_ROUTES='[{"pattern":"*","brokers":["kafka","rabbitmq"]}]' relaybus relay
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    overrides: dict[str, object] = {}
    if instance:
        overrides["relay_instance"] = instance
    if metrics_port >= 0:
        overrides["relay_metrics_port"] = metrics_port
    if source is not None:
        overrides["relay_source"] = source.value
    settings = Settings(**overrides)  # type: ignore[arg-type]
    if settings.relay_source == "wal":
        asyncio.run(run_wal_relay(settings))
    else:
        asyncio.run(run_relay(settings))
