"""The one naming rule for retry tiers and dead-letter queues, on both brokers.

Kafka topics and RabbitMQ queues follow it alike: a source ``S`` (a topic or a work
queue) has tiers ``S.retry.1 … S.retry.<n>`` and the dead-letter queue ``S.dlq``.
RabbitMQ additionally has ``S.retry.due``, where expired tier copies come back
(a separate queue, so a delivery on ``S`` itself is always a first attempt).
"""

from __future__ import annotations

DLQ_SUFFIX = ".dlq"
RETRY_INFIX = ".retry."
RETURNS_SUFFIX = ".retry.due"


def retry_name(source: str, tier: int) -> str:
    """The retry tier ``tier`` (1-based) of ``source``; tier 0 is the source itself."""
    if tier < 1:
        raise ValueError(f"retry tiers start at 1, got {tier}")
    return f"{source}{RETRY_INFIX}{tier}"


def dlq_name(source: str) -> str:
    """The dead-letter queue of ``source``."""
    return f"{source}{DLQ_SUFFIX}"


def returns_name(queue: str) -> str:
    """RabbitMQ: where copies whose tier TTL expired come back to be retried."""
    return f"{queue}{RETURNS_SUFFIX}"


def is_dlq(name: str) -> bool:
    return name.endswith(DLQ_SUFFIX) and name != DLQ_SUFFIX


def source_of_dlq(name: str) -> str:
    """``X.dlq`` -> ``X``: the only place a replay may send a letter back to by default."""
    if not is_dlq(name):
        raise ValueError(f"{name!r} is not a dead-letter queue (names end in '{DLQ_SUFFIX}')")
    return name.removesuffix(DLQ_SUFFIX)
