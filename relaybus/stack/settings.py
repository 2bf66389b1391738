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

    data_dir: Path = Field(
        default_factory=lambda: _repo_root() / ".stack",
        description="Where the services keep their data, logs and generated secrets.",
    )
    cache_dir: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "relaybus",
        description="Downloaded Kafka, Kafka Connect and Debezium jars, Toxiproxy builds.",
    )
    host: str = Field("127.0.0.1", description="The address every service binds (loopback).")
    postgres_port: int = Field(5432, description="PostgreSQL.")
    postgres_db: str = Field("relaybus", description="The application database.")
    postgres_user: str = Field("relaybus", description="The application role (not superuser).")
    redis_port: int = Field(6379, description="Redis (dedupe, rate limits, locks).")
    redlock_ports: tuple[int, ...] = Field(
        (6380, 6381, 6382), description="The independent Redis servers of Redlock."
    )
    rabbitmq_port: int = Field(5672, description="RabbitMQ AMQP (dev listener).")
    rabbitmq_management_port: int = Field(15672, description="RabbitMQ management API.")
    rabbitmq_dist_port: int = Field(25672, description="RabbitMQ's Erlang distribution port.")
    rabbitmq_node: str = Field(
        "relaybus@localhost",
        description="RabbitMQ's Erlang node name (a second stack on one host needs its own).",
    )
    rabbitmq_tls_port: int = Field(
        5671, description="AMQPS with a vhost-limited user (the authenticated endpoint)."
    )
    kafka_secure_port: int = Field(
        9094, description="Kafka SASL_SSL with SCRAM-SHA-512 (the authenticated endpoint)."
    )
    toxiproxy_version: str = Field("v2.12.0", description="Toxiproxy built with go install.")
    toxiproxy_port: int = Field(8474, description="Toxiproxy's HTTP API (network faults).")
    jaeger_version: str = Field(
        "v1.75.0", description="Jaeger (`stack up --tracing`), built with go get -tool."
    )
    jaeger_otlp_port: int = Field(4318, description="Jaeger's OTLP/HTTP receiver (traces in).")
    jaeger_query_port: int = Field(16686, description="Jaeger's query API and UI (traces out).")
    jaeger_max_traces: int = Field(
        100_000, description="Traces Jaeger's in-memory store keeps (oldest dropped)."
    )
    kafka_proxied_port: int = Field(
        9096,
        description="Toxiproxy's Kafka proxy; the single node advertises its PROXIED "
        "listener here, so proxied clients stay behind the proxy.",
    )
    kafka_proxied_upstream_port: int = Field(
        9095, description="The single Kafka node's PROXIED listener (behind the proxy)."
    )
    postgres_proxied_port: int = Field(5433, description="Toxiproxy's PostgreSQL proxy.")
    rabbitmq_proxied_port: int = Field(5673, description="Toxiproxy's RabbitMQ proxy.")
    kafka_port: int = Field(9092, description="The single Kafka node (KRaft) broker.")
    kafka_controller_port: int = Field(9093, description="The single node's controller.")
    kafka_cluster_base_port: int = Field(
        9092,
        description="The 3-node KRaft cluster: node i listens on base + 10000 + 100*(i-1) "
        "(broker; 19092, 19192, 19292 by default) and +1 (controller).",
    )
    kafka_version: str = Field("4.3.1", description="Kafka, from Maven Central.")
    kafka_heap: str = Field("512m", description="Each Kafka node's heap.")
    debezium_version: str = Field(
        "3.6.1.Final", description="Debezium's PostgreSQL connector (`stack up --debezium`)."
    )
    connect_port: int = Field(8083, description="Kafka Connect's REST API.")
    connect_heap: str = Field("384m", description="Kafka Connect's heap.")
    debezium_topic_prefix: str = Field(
        "debezium.outbox.event.",
        description="Debezium's outbox router publishes to <prefix><aggregatetype>: apart "
        "from the relay's topics, so both can run side by side (docs/cdc.md).",
    )
    debezium_slot: str = Field("debezium_outbox", description="Debezium's replication slot.")
    debezium_poll_interval_ms: int = Field(20, description="Debezium's poll interval.")
    start_timeout_s: float = Field(120.0, description="How long `stack up` waits per service.")
