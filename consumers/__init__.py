"""Idempotent consumer runtime (inbox dedupe, retries, dead letters) for Kafka and
RabbitMQ. Arrives with the consumers issue."""
