"""Idempotent consumer runtime for Kafka and RabbitMQ: inbox dedupe, retry tiers,
dead letters, timeouts and circuit breakers. Run an app with ``relaybus worker``."""

from relaybus.consumers.app import ConsumerApp, Handler, KafkaSource, RabbitSource
from relaybus.consumers.breaker import CircuitBreaker
from relaybus.consumers.incoming import Incoming, InvalidMessage
from relaybus.consumers.policy import RetryPolicy

__all__ = [
    "CircuitBreaker",
    "ConsumerApp",
    "Handler",
    "Incoming",
    "InvalidMessage",
    "KafkaSource",
    "RabbitSource",
    "RetryPolicy",
]
