"""Typed settings for every relaybus process (environment prefix ``RELAYBUS_``)."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from relaybus.brokers.kafka_connection import KafkaConnection, SaslMechanism, SecurityProtocol


class Route(BaseModel):
    """Events whose ``type`` matches ``pattern`` (fnmatch, e.g. ``order.*``) go to ``brokers``."""

    pattern: str
    brokers: list[Literal["kafka", "rabbitmq"]] = Field(min_length=1)


class Settings(BaseSettings):
    """Where the services are. Defaults are the loopback endpoints ``relaybus stack up`` starts.

    Each field reads ``RELAYBUS_<FIELD>`` (e.g. ``RELAYBUS_DATABASE_URL``); files in
    the working directory are read too, the environment winning over both: ``.env``,
    then ``.stack/secure/local.env``, which ``relaybus stack up`` writes with the local
    stack's generated credentials (no account of the stack has a well-known
    password, so the defaults below carry none). Built once per process, in its
    composition root, and passed down: nothing reads the environment elsewhere.
    """

    model_config = SettingsConfigDict(
        env_prefix="RELAYBUS_",
        # Later files win: a developer's own .env over the stack's generated one.
        env_file=(".stack/secure/local.env", ".env"),
        extra="ignore",
    )

    database_url: str = Field(
        "postgresql+asyncpg://relaybus@127.0.0.1:5432/relaybus",
        description="SQLAlchemy async URL of the PostgreSQL database (user:password@…; "
        "the local stack's is in .stack/secure/local.env).",
    )
    kafka_bootstrap: str = Field(
        "127.0.0.1:9092", description="Comma-separated Kafka bootstrap servers."
    )
    kafka_security_protocol: SecurityProtocol = Field(
        "PLAINTEXT",
        description="PLAINTEXT on the local stack; SASL_SSL for an authenticated cluster "
        "(`relaybus stack up` also serves SASL_SSL with SCRAM-SHA-512 on port 9094).",
    )
    kafka_sasl_mechanism: SaslMechanism = Field(
        "SCRAM-SHA-512", description="SASL mechanism when the protocol is SASL_*."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(
        None, description="SASL password (never logged or printed)."
    )
    kafka_ssl_cafile: str | None = Field(
        None, description="CA certificate (PEM) the broker's certificate is checked against."
    )
    rabbitmq_url: SecretStr = Field(
        SecretStr("amqp://127.0.0.1:5672/"),
        description="AMQP URL of RabbitMQ; amqps://user:password@host:5671/vhost?cafile=ca.pem "
        "for TLS (kept secret: it holds the password).",
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL.")

    @property
    def kafka(self) -> KafkaConnection:
        """How every Kafka client of this process connects (bootstrap, TLS, SASL)."""
        password = self.kafka_sasl_password
        return KafkaConnection(
            self.kafka_bootstrap,
            self.kafka_security_protocol,
            self.kafka_sasl_mechanism,
            self.kafka_sasl_username,
            password.get_secret_value() if password is not None else None,
            self.kafka_ssl_cafile,
        )

    @property
    def rabbitmq(self) -> str:
        """The AMQP URL, password included: pass it to a client, never to a log."""
        return self.rabbitmq_url.get_secret_value()

    @property
    def rabbitmq_management(self) -> str:
        """The management API's URL, password included (same care as ``rabbitmq``)."""
        return self.rabbitmq_management_url.get_secret_value()

    @field_validator("database_url")
    @classmethod
    def _database_url_parses(cls, value: str) -> str:
        # Checked here so a bad URL is a one-line settings error at start, not a
        # traceback at first use; the message never repeats the URL (it may hold a
        # password).
        try:
            make_url(value)
        except (ArgumentError, ValueError):
            raise ValueError("not a database URL (postgresql+asyncpg://user@host/db)") from None
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or network (e.g. 10.0.0.5, 10.0.0.0/8)"
                ) from None
        return value

    @field_validator("console_metrics_endpoints")
    @classmethod
    def _endpoints_are_http(cls, value: dict[str, str]) -> dict[str, str]:
        for name, url in value.items():
            if not url.startswith(("http://", "https://")) or not name:
                raise ValueError(f"endpoint {name[:40]!r}: give an http(s) URL of a /metrics page")
        return value

    redlock_urls: list[str] = Field(
        [
            "redis://127.0.0.1:6380/0",
            "redis://127.0.0.1:6381/0",
            "redis://127.0.0.1:6382/0",
        ],
        description="Independent Redis servers for Redlock (JSON list).",
    )

    # Outbox and relay
    outbox_partitions: int = Field(
        16, ge=1, le=1024, description="Relay partitions (hash of aggregateid); fixed per table."
    )
    outbox_max_payload_bytes: int = Field(1_048_576, ge=1, description="Payload size cap.")
    routes: list[Route] = Field(
        default_factory=lambda: [Route(pattern="*", brokers=["kafka"])],
        description="Event type pattern -> brokers, first match wins (JSON list of "
        '{"pattern": "order.*", "brokers": ["kafka", "rabbitmq"]}).',
    )
    inbox_retention_days: float = Field(
        7, gt=0, description="Inbox rows older than this are purged by workers."
    )
    rabbitmq_management_url: SecretStr = Field(
        SecretStr("http://127.0.0.1:15672"),
        description="RabbitMQ management API (DLQ listing); kept secret: it holds the password.",
    )
    relay_batch_size: int = Field(500, ge=1, description="Rows per publish batch.")
    relay_concurrent_batches: int = Field(
        4, ge=1, description="Batches in flight at once per relay process (all partitions)."
    )
    relay_max_inflight_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="Payload bytes a relay process holds in memory at most (all batches).",
    )
    relay_lease_ttl: float = Field(10.0, gt=0, description="Partition lease TTL, seconds.")
    relay_poll_interval: float = Field(
        1.0, gt=0, description="Polling fallback when no NOTIFY arrives, seconds."
    )
    relay_listen: bool = Field(
        True, description="Wake on LISTEN/NOTIFY when idle (false: poll only)."
    )
    relay_archive: bool = Field(
        True, description="Move published rows to outbox_archive (else delete them)."
    )
    relay_archive_retention_days: float = Field(7.0, ge=0, description="Archive retention.")
    relay_backlog_interval: float = Field(
        15.0,
        gt=0,
        description="Seconds between the backlog metrics' count of the outbox "
        "(a read of every row in it).",
    )
    relay_source: Literal["poll", "wal"] = Field(
        "poll",
        description="Where the relay reads events: 'poll' queries the outbox table; 'wal' "
        "streams its inserts from a logical replication slot (docs/cdc.md).",
    )
    relay_wal_slot: str = Field(
        "relaybus_outbox",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="The WAL relay's logical replication slot (created if missing).",
    )
    relay_wal_publication: str = Field(
        "relaybus_outbox",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="The publication of the outbox's inserts (created if missing).",
    )
    relay_wal_delete_published: bool = Field(
        True,
        description="The WAL relay deletes the rows it published (false when writers "
        "delete their own rows in the inserting transaction: RELAYBUS_OUTBOX_DELETE_ON_WRITE).",
    )
    outbox_delete_on_write: bool = Field(
        False,
        description="Writers delete each outbox row in the transaction that inserts it "
        "(WAL relay or Debezium only: the polling relay would never see the rows).",
    )
    outbox_slot_stale_after: float = Field(
        300.0,
        gt=0,
        description="`outbox status` warns about a replication slot with no consumer for "
        "longer than this many seconds (it keeps all WAL written since).",
    )
    relay_metrics_port: int = Field(0, ge=0, description="Prometheus /metrics port (0 = off).")
    worker_metrics_port: int = Field(
        0, ge=0, le=65535, description="A worker's Prometheus /metrics port (0 = off)."
    )
    worker_metrics_host: str = Field(
        "127.0.0.1", description="Address a worker's metrics port binds (loopback by default)."
    )
    relay_metrics_host: str = Field(
        "127.0.0.1", description="Address the metrics port binds (loopback by default)."
    )
    relay_instance: str = Field("", description="Relay instance name (default: host-pid).")
    kafka_session_timeout_ms: int = Field(
        10_000, ge=1000, description="Consumer group session timeout (dead member detection)."
    )
    kafka_max_request_size: int = Field(1_048_576, ge=1024, description="Producer max request.")
    kafka_request_timeout_ms: int = Field(
        15_000,
        ge=1000,
        description="Producer request timeout: how long a produce request waits for "
        "acks=all before aiokafka retries it (a frozen leader is left sooner: see "
        "kafka_stall_after).",
    )
    kafka_stall_after: float = Field(
        2.0,
        gt=0,
        description="Seconds the relay waits for a Kafka partition's acknowledgement "
        "before deferring that partition's rows and publishing the others; while it "
        "stalls, its leader is re-checked every quarter of this.",
    )
    kafka_topic_prefix: str = Field(
        "outbox.event.",
        pattern=r"^[A-Za-z0-9._-]{0,200}$",
        description="The relay publishes to '<prefix><aggregatetype>' (Debezium's outbox "
        "router default); a second relay source can publish side by side under another.",
    )
    console_host: str = Field(
        "127.0.0.1", description="Address the console binds (loopback unless configured)."
    )
    console_port: int = Field(8470, ge=1, le=65535, description="The console's HTTP port.")
    console_user: str = Field("operator", min_length=1, max_length=64, description="Login name.")
    console_password_hash: SecretStr | None = Field(
        None,
        description="scrypt hash of the console password (relaybus console --hash-password); "
        "no default: the console does not start without one.",
    )
    console_session_idle_seconds: float = Field(
        1800, gt=0, description="A console session ends after this long without a request."
    )
    console_allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host header values the console answers (JSON list, e.g. "
        "'[\"ops.example.com\"]'); the bind address and, on loopback, localhost are always "
        "allowed. Anything else is refused (DNS rebinding).",
    )
    console_tls_certfile: str | None = Field(
        None, description="PEM certificate: the console serves HTTPS with it (and the key)."
    )
    console_tls_keyfile: str | None = Field(None, description="PEM private key of the above.")
    console_behind_proxy: bool = Field(
        False,
        description="The console is bound beyond loopback without TLS because a proxy in "
        "RELAYBUS_TRUSTED_PROXIES terminates it (cookies are Secure when it says https).",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses or networks (JSON list, e.g. '[\"10.0.0.5\"]') whose "
        "X-Forwarded-For / -Proto the HTTP services believe. Default none: the client "
        "address is the connection's peer, whatever a header says.",
    )
    tracing_trust_client_context: bool = Field(
        False,
        description="The HTTP services continue a client's W3C traceparent/tracestate "
        "(set it when the callers are your own traced services). Default off: each "
        "request starts its own trace, whatever a header says.",
    )
    tracing_jaeger_url: str | None = Field(
        None,
        description="Jaeger's query API (e.g. http://127.0.0.1:16686) that `relaybus "
        "trace` and the console read traces from; `relaybus stack up --tracing` starts one.",
    )
    console_metrics_endpoints: dict[str, str] = Field(
        default_factory=dict,
        description='Prometheus endpoints the console reads and links to (JSON: {"relay": '
        '"http://127.0.0.1:9400/metrics"}).',
    )
