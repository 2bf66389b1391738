"""Transactional outbox: the table, the writer API that joins a caller's transaction,
and the relay that publishes committed rows to Kafka / RabbitMQ in per-key order."""

from relaybus.outbox.writer import Outbox, OutboxError, partition_for

__all__ = ["Outbox", "OutboxError", "partition_for"]
