"""Idempotent consumer runtime for Kafka and RabbitMQ: inbox dedupe, retry tiers,
dead letters, timeouts and circuit breakers. Run an app with ``relaybus worker``."""

from consumers.app import ConsumerApp, Handler, KafkaSource, RabbitSource
from consumers.breaker import CircuitBreaker
from consumers.incoming import Incoming, InvalidMessage
from consumers.policy import RetryPolicy

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
