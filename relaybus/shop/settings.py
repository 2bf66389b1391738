"""Typed settings of the shop's processes (environment prefix ``RELAYBUS_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def refills_within(rate: float, burst: int, ttl: float) -> bool:
    """Whether a token bucket of ``rate`` and ``burst`` refills within ``ttl``
    seconds (admission reads a bucket it no longer keeps as full). A bucket that
    never refills (rate 0) passes only with burst 0: it refuses everything."""
    if rate == 0:
        return burst == 0
    return rate > 0 and burst / rate <= ttl


class ShopSettings(BaseSettings):
    """The shop's knobs. Built once per process in its composition root.

    Where the services are (database, brokers) comes from ``relaybus.settings.Settings``.
    """

    model_config = SettingsConfigDict(env_prefix="RELAYBUS_", env_file=".env", extra="ignore")

    shop_partitions: int = Field(
        4, ge=1, le=256, description="Partitions of every shop topic (all equal: co-partitioned)."
    )
    shop_replication: int = Field(1, ge=1, description="Replication factor of shop topics.")
    faust_data_dir: Path = Field(
        Path("."),
        description="Where the faust apps (saga, read model) keep their data, one "
        "'<app>-data' folder each (a writable volume in a container).",
    )
    orders_api_host: str = Field("127.0.0.1", description="Address the orders API binds.")
    orders_api_port: int = Field(8080, ge=1, le=65535, description="Orders API port.")
    orders_api_replicas: int = Field(
        2,
        ge=1,
        le=16,
        description="Orders API processes `relaybus run` and the demo start (ports "
        "orders_api_port, +1, ...); the flash-sale client balances over them.",
    )
    orders_api_balancer: str = Field(
        "least-connections",
        description="How the flash-sale client picks an API replica: random, round-robin, "
        "weighted-round-robin, least-connections, power-of-two, hash, consistent-hash.",
    )
    orders_api_max_body_bytes: int = Field(
        64 * 1024, ge=256, description="Largest request body the orders API reads (else 413)."
    )
    orders_api_workers_pool: int = Field(20, ge=1, description="Database connections of the API.")
    orders_idempotency_retention: float = Field(
        86_400.0,
        ge=60,
        description="Seconds an Idempotency-Key is remembered (per customer); older ones are "
        "purged by the API's sweep, and the same key then makes a new order.",
    )
    orders_api_key_cache_seconds: float = Field(
        30.0,
        ge=0,
        description="How long the orders API trusts a verified API key without asking the "
        "database again (a revoked key stops working within this time); it also loads "
        "every live key every half of it (0: every request asks the database).",
    )
    orders_backlog_seconds: float = Field(
        2.0,
        ge=0,
        description="Shed POST /orders (429 with Retry-After) while the unfinished orders "
        "would take longer than this to finish at the rate the shop finishes them "
        "(Little's law); 0: never shed.",
    )
    orders_backlog_floor: int = Field(
        50, ge=1, description="Unfinished orders always admitted, whatever the finish rate."
    )
    orders_backlog_vip_headroom: float = Field(
        2.0, ge=1, description="VIP customers are shed last: admitted up to this times the limit."
    )
    orders_backlog_queue: int = Field(
        0,
        ge=0,
        le=100_000,
        description="Requests over the limit that wait in a leaky-bucket queue released at "
        "the finish rate (degradation by queueing) instead of a 429; 0: shed at once.",
    )
    background_nice: int = Field(
        5,
        ge=0,
        le=19,
        description="Niceness `relaybus run` and `relaybus demo` start the shop's background "
        "processes with (relay, workers, stream processors; the HTTP services keep 0): "
        "when the CPU is short, the front door answers first, its 429s included.",
    )
    orders_backlog_poll: float = Field(
        0.25, gt=0, description="Seconds between two readings of the backlog by the API."
    )
    saga_deadline: float = Field(
        120.0, gt=0, description="Seconds an order may stay unfinished before compensation."
    )
    saga_sweep_interval: float = Field(5.0, gt=0, description="How often the deadline is checked.")
    saga_commit_interval: float = Field(
        0.1, gt=0, description="faust commit (and transaction) interval of the saga, seconds."
    )
    saga_session_timeout: float = Field(
        10.0,
        gt=0,
        description="Kafka session timeout of the saga (a killed agent's partitions "
        "move after this).",
    )
    gateway_host: str = Field("127.0.0.1", description="Address the simulated gateway binds.")
    gateway_port: int = Field(8090, ge=1, le=65535, description="Simulated payment gateway port.")
    gateway_url: str = Field(
        "",
        description="Where the payments service reaches the gateway (default: "
        "http://<gateway_host>:<gateway_port>; set it when the gateway binds 0.0.0.0).",
    )
    gateway_latency: float = Field(0.005, ge=0, description="Gateway latency per call, seconds.")
    gateway_failure_rate: float = Field(
        0.2, ge=0, le=1, description="Share of charges the gateway declines."
    )
    gateway_timeout_rate: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Share of charges whose answer comes after the client "
        "timed out (the charge itself is decided and stored).",
    )
    gateway_seed: int | None = Field(None, description="Seed of the gateway's randomness.")
    payment_timeout: float = Field(1.0, gt=0, description="Per-call timeout to the gateway.")
    payment_retries: int = Field(3, ge=0, le=10, description="Retries per gateway call.")

    admission_user_rate: float = Field(
        5.0, ge=0, description="Order requests per second each customer may make (refill)."
    )
    admission_user_burst: int = Field(
        20, ge=0, description="Requests a customer may make at once (bucket size)."
    )
    admission_ip_rate: float = Field(
        1000.0, ge=0, description="Order requests per second from one client address."
    )
    admission_ip_burst: int = Field(2000, ge=0, description="Burst per client address.")
    admission_global_rate: float = Field(
        5000.0, ge=0, description="Order requests per second the shop admits in all."
    )
    admission_global_burst: int = Field(5000, ge=0, description="Burst of the global limit.")
    admission_vip: set[str] = Field(
        default_factory=set,
        description="Customers exempt from every admission limit (JSON list in the "
        "environment, e.g. '[\"alice\"]').",
    )
    admission_decision_ttl: int = Field(
        86_400,
        ge=60,
        description="Seconds admission remembers its decision per order (a redelivered "
        "request gets the same answer and takes no token again).",
    )

    @model_validator(mode="after")
    def _limits_refill_within_the_decision_ttl(self) -> ShopSettings:
        """Admission keeps a bucket for a slice of the decision TTL and reads one it
        no longer has as full: right only for a limit that refills within it."""
        ttl = self.admission_decision_ttl
        for scope in ("user", "ip", "global"):
            rate = getattr(self, f"admission_{scope}_rate")
            burst = getattr(self, f"admission_{scope}_burst")
            if not refills_within(rate, burst, ttl):
                raise ValueError(
                    f"RELAYBUS_ADMISSION_{scope.upper()}_BURST / _RATE ({burst} / {rate:g}) "
                    f"must refill within RELAYBUS_ADMISSION_DECISION_TTL ({ttl} s): raise "
                    "the rate or the TTL (a limit that never refills needs burst 0)"
                )
        return self

    inventory_shards: list[int] = Field(
        [0, 1],
        description="Inventory shards the shop starts with (JSON list); `relaybus shards "
        "set` changes the set at run time.",
    )
    inventory_vnodes: int = Field(160, ge=1, description="Virtual nodes per shard on the ring.")
    inventory_ring_probes: int = Field(
        4, ge=1, le=64, description="Lookups per key on the ring (1: the classic ring)."
    )
    inventory_shard: int | None = Field(
        None,
        ge=0,
        description="Which shard an inventory worker serves (unset: it reads the "
        "unsharded command topic, for a shop run without the router).",
    )
    router_lease_ttl: float = Field(
        10.0, gt=1, description="Seconds of the router's Redlock lease (renewed at 1/3)."
    )

    read_model_host: str = Field("127.0.0.1", description="Address the read model serves on.")
    read_model_port: int = Field(
        8095, ge=1, le=65535, description="Port of the order-status read model (faust web)."
    )
    orders_cache_policy: str = Field(
        "lru", pattern="^(lru|lfu|fifo)$", description="The orders API's front cache policy."
    )
    orders_cache_size: int = Field(
        10_000, ge=0, description="Order views the API's front cache holds (0: no cache)."
    )
    read_model_timeout: float = Field(
        0.5, gt=0, description="Seconds the API waits for the read model before the database."
    )

    read_model_url: str = Field(
        "",
        description="Where the orders API reaches the read model (default: "
        "http://<read_model_host>:<read_model_port>; set it when the read model binds 0.0.0.0).",
    )

    @property
    def read_model_base_url(self) -> str:
        return self.read_model_url or f"http://{self.read_model_host}:{self.read_model_port}"

    @property
    def gateway_base_url(self) -> str:
        return self.gateway_url or f"http://{self.gateway_host}:{self.gateway_port}"

    @property
    def orders_api_url(self) -> str:
        return f"http://{self.orders_api_host}:{self.orders_api_port}"

    @property
    def orders_api_urls(self) -> list[str]:
        """Every replica's URL (replica n listens on ``orders_api_port + n``)."""
        return [
            f"http://{self.orders_api_host}:{self.orders_api_port + n}"
            for n in range(self.orders_api_replicas)
        ]
