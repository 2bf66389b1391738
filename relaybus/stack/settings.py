"""Where the stack keeps its data and which loopback ports it uses."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _repo_root() -> Path:
    """The source checkout relaybus runs from, else the working directory (an
    installed wheel keeps its stack next to the project that runs it)."""
    checkout = Path(__file__).resolve().parents[2]
    return checkout if (checkout / "pyproject.toml").exists() else Path.cwd()


class StackSettings(BaseSettings):
    """Stack layout; every field can be overridden with ``RELAYBUS_STACK_<FIELD>``.

    Defaults match the kernel's client settings (``relaybus.settings.Settings``), so a
    stack started with defaults is what every client connects to.
    """

    model_config = SettingsConfigDict(env_prefix="RELAYBUS_STACK_")

    data_dir: Path = Field(default_factory=lambda: _repo_root() / ".stack")
    cache_dir: Path = Field(default_factory=lambda: Path.home() / ".cache" / "relaybus")
    host: str = "127.0.0.1"
    postgres_port: int = 5432
    postgres_db: str = "relaybus"
    postgres_user: str = "relaybus"
    redis_port: int = 6379
    redlock_ports: tuple[int, ...] = (6380, 6381, 6382)
    rabbitmq_port: int = 5672
    rabbitmq_management_port: int = 15672
    rabbitmq_dist_port: int = 25672
    # The authenticated endpoints (stack/secure.py): AMQPS with a vhost-limited user,
    # Kafka SASL_SSL with SCRAM-SHA-512, next to the plaintext dev listeners.
    rabbitmq_tls_port: int = 5671
    kafka_secure_port: int = 9094
    # Toxiproxy (network faults, S6): its API, and the proxies' listening ports. The
    # single Kafka node has a PROXIED listener on kafka_proxied_upstream_port that it
    # advertises as kafka_proxied_port, so proxied clients stay behind the proxy.
    toxiproxy_version: str = "v2.12.0"
    toxiproxy_port: int = 8474
    kafka_proxied_port: int = 9096
    kafka_proxied_upstream_port: int = 9095
    postgres_proxied_port: int = 5433
    rabbitmq_proxied_port: int = 5673
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    # The 3-node KRaft cluster: node i listens on base + 10000*i (broker) and +1 (controller).
    kafka_cluster_base_port: int = 9092
    kafka_version: str = "4.3.1"
    kafka_heap: str = "512m"
    # Kafka Connect (standalone) running Debezium's PostgreSQL connector, on request.
    debezium_version: str = "3.6.1.Final"
    connect_port: int = 8083
    connect_heap: str = "384m"
    # Debezium's outbox router publishes to '<prefix><aggregatetype>': apart from the
    # relay's topics by default, so both can run side by side (docs/cdc.md).
    debezium_topic_prefix: str = "debezium.outbox.event."
    debezium_slot: str = "debezium_outbox"
    debezium_poll_interval_ms: int = 20
    start_timeout_s: float = 120.0
