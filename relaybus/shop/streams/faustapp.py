"""What every relaybus faust app shares: exactly-once settings and write-through tables."""

from __future__ import annotations

from typing import Any

import faust

from relaybus.brokers.kafka_connection import KafkaConnection
from relaybus.settings import Settings
from relaybus.shop.settings import ShopSettings


def shop_faust_app(
    app_id: str, settings: Settings, shop: ShopSettings, partitions: int, **extra: Any
) -> faust.App:
    """A faust app in ``exactly_once`` mode (unless ``extra`` says otherwise) on
    relaybus's Kafka, memory store (the changelog is the durable copy), the shop's
    commit interval and session timeout, reading from the earliest offset; ``extra``
    adds or overrides faust settings."""
    brokers = [f"kafka://{host.strip()}" for host in settings.kafka_bootstrap.split(",")]
    options: dict[str, Any] = {
        "broker": brokers,
        "broker_credentials": faust_credentials(settings.kafka),
        "store": "memory://",
        "processing_guarantee": "exactly_once",
        "topic_partitions": partitions,
        "topic_replication_factor": shop.shop_replication,
        "table_standby_replicas": 0,
        "broker_commit_interval": shop.saga_commit_interval,
        "broker_session_timeout": shop.saga_session_timeout,
        "broker_heartbeat_interval": max(shop.saga_session_timeout / 5, 0.5),
        "consumer_auto_offset_reset": "earliest",
        "web_enabled": False,
        # Not the working directory: in a container that is the read-only app folder.
        "datadir": str(shop.faust_data_dir / f"{app_id}-data"),
        "autodiscover": False,
        "producer_acks": -1,
    }
    return faust.App(app_id, **{**options, **extra})


def faust_credentials(kafka: KafkaConnection) -> faust.types.auth.CredentialsT | None:
    """faust's form of ``kafka``'s TLS/SASL settings (None on plaintext)."""
    options = kafka.client_options()  # refuses SASL without credentials, as elsewhere
    context = options.get("ssl_context")
    if kafka.uses_sasl:
        return faust.SASLCredentials(
            username=kafka.username,
            password=kafka.password,
            ssl_context=context,
            mechanism=kafka.sasl_mechanism,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


async def write_through(table: Any, key: str, value: bytes, partition: int) -> None:
    """Set ``table[key] = value`` so that its changelog record is in the open
    transaction before the caller takes its next event.

    Why not ``table[key] = value``: that sends the changelog record through faust's
    send buffer, and in exactly-once mode faust-streaming 0.15.3 commits a
    transaction without flushing that buffer (only its at-least-once path flushes).
    A record still buffered lands in the *next* transaction, after its event's offset
    was committed, and a crash or a stop loses it (seen: a kill lost the last ~15
    updates of a partition of the read model; the saga lost state the same way).
    Here the local store is written and the record is sent with ``Topic.send``, which
    faust attaches to the current event and publishes, and waits for, before it
    commits that event's offset (in either processing guarantee).
    """
    table.data[key] = value
    await table.changelog_topic.send(
        key=key,
        value=value,
        partition=partition,
        key_serializer=table.key_serializer,
        value_serializer=table.value_serializer,
    )
