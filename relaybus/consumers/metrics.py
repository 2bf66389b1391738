"""Prometheus metrics of one worker process (own registry: no import-time globals).

Counters are read from each handler's ``Processor.stats`` when Prometheus scrapes
(a collector, not a second set of counters bumped per message), so the hot path
pays only for the latency histogram.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from relaybus.consumers.breaker import BreakerState

if TYPE_CHECKING:
    from relaybus.consumers.processor import Processor

# Processor.stats keys -> the outcome label of relaybus_worker_messages_total.
OUTCOMES = {
    "done": "handled",
    "duplicate": "duplicate",
    "retried": "retried",
    "dead": "dead-lettered",
    "failed": "failed-attempt",
    "invalid": "invalid",
    "paused": "breaker-paused",
}
BREAKER_VALUES = {BreakerState.CLOSED: 0.0, BreakerState.HALF_OPEN: 1.0, BreakerState.OPEN: 2.0}
# Handler latency buckets (seconds): a SQL handler's transaction is ~1-10 ms here.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class WorkerMetrics:
    """``relaybus_worker_messages_total{handler,outcome}`` (handled, duplicate,
    retried, dead-lettered, failed-attempt, invalid, breaker-paused),
    ``relaybus_worker_handler_seconds{handler}`` (handler latency: one message, or a
    shared transaction's duration for each message in it) and
    ``relaybus_worker_breaker_state{handler}`` (0 closed, 1 half-open, 2 open)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "relaybus_worker_handler_seconds",
            "Time in the handler (and its inbox transaction) per message.",
            ["handler"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._processors: list[Processor] = []
        self.registry.register(_ProcessorCollector(self._processors))

    def watch(self, processor: Processor) -> None:
        """Report ``processor``'s counters and breaker, and time its handler."""
        self._processors.append(processor)
        processor.observe = self.latency.labels(processor.handler.name).observe

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Expose ``/metrics`` on ``host:port`` (a daemon thread of prometheus_client);
        loopback unless the operator names another address."""
        start_http_server(port, addr=host, registry=self.registry)


class _ProcessorCollector(Collector):
    def __init__(self, processors: Iterable[Processor]) -> None:
        self._processors = processors

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        messages = CounterMetricFamily(
            "relaybus_worker_messages",
            "Deliveries by outcome.",
            labels=["handler", "outcome"],
        )
        breaker = GaugeMetricFamily(
            "relaybus_worker_breaker_state",
            "Circuit breaker: 0 closed, 1 half-open, 2 open (absent without a breaker).",
            labels=["handler"],
        )
        for processor in list(self._processors):
            name = processor.handler.name
            stats = dict(processor.stats)  # a copy: the event loop thread updates it
            for key, outcome in OUTCOMES.items():
                messages.add_metric([name, outcome], float(stats.get(key, 0)))
            if processor.handler.breaker is not None:
                breaker.add_metric([name], BREAKER_VALUES[processor.handler.breaker.state])
        yield messages
        yield breaker
