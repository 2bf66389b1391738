"""Prometheus metrics of one relay process (own registry: no import-time globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server


class RelayMetrics:
    """Backlog, oldest pending age, published and failure counters, held partitions.

    ``published/s`` is ``rate(relaybus_relay_published_total[1m])`` in Prometheus.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.backlog = Gauge("relaybus_outbox_backlog", "Pending outbox rows.", registry=r)
        self.failed_rows = Gauge("relaybus_outbox_failed", "Outbox rows marked failed.", registry=r)
        self.oldest_age = Gauge(
            "relaybus_outbox_oldest_pending_age_seconds",
            "Age of the oldest pending outbox row.",
            registry=r,
        )
        self.published = Counter(
            "relaybus_relay_published", "Rows published.", ["broker"], registry=r
        )
        self.failures = Counter(
            "relaybus_relay_failures", "Publish failures.", ["kind"], registry=r
        )
        self.partitions = Gauge(
            "relaybus_relay_partitions_held", "Partitions leased by this relay.", registry=r
        )
        self.stalled = Gauge(
            "relaybus_relay_stalled_destinations",
            "Destinations (Kafka partitions) not acknowledging in time; their rows wait.",
            ["broker"],
            registry=r,
        )
        self.stall_age = Gauge(
            "relaybus_relay_oldest_stall_seconds",
            "How long the oldest stalled destination has not acknowledged (0: none).",
            ["broker"],
            registry=r,
        )

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Expose ``/metrics`` on ``host:port`` (a daemon thread of prometheus_client);
        loopback unless the operator names another address."""
        start_http_server(port, addr=host, registry=self.registry)
