"""Kafka adapter (aiokafka): idempotent acks=all producer, key = aggregateid."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from aiokafka.partitioner import murmur2

from relaybus.brokers.publisher import DEFERRED, PUBLISHED, Outcome, PublishError
from relaybus.message import Message

# Record batch + record framing that is not key, value or headers (generous).
RECORD_OVERHEAD = 128
# Below this distance from the limit a message cannot be too large unless its headers
# alone are huge (the broker then refuses it, reported the same way): skip measuring.
SIZE_CHECK_MARGIN = 64 * 1024


def default_topic(message: Message) -> str:
    """Debezium's outbox event router default: ``outbox.event.<aggregatetype>``."""
    return f"outbox.event.{message.aggregatetype}"


def prefixed_topic(prefix: str) -> Callable[[Message], str]:
    """``<prefix><aggregatetype>``; ``default_topic`` for the default prefix."""
    if prefix == "outbox.event.":
        return default_topic
    return lambda message: f"{prefix}{message.aggregatetype}"


def record_size(message: Message) -> int:
    """Upper estimate of the bytes ``message`` occupies in a produce request."""
    headers = message.headers()
    header_bytes = sum(len(k) + len(v.encode()) for k, v in headers.items()) + 8 * len(headers)
    key_bytes = len(message.aggregateid.encode())
    return len(message.payload) + key_bytes + header_bytes + RECORD_OVERHEAD


class KafkaPublisher:
    """Publishes to Kafka with ``acks=all`` and idempotence (no duplicates on producer retry).

    A message over ``max_request_size`` is refused before sending (permanent), and
    later messages of its key in the same call are deferred, never sent ahead of it.
    The rest are sent without waiting in between, then awaited together; a key maps
    to one partition and the idempotent producer keeps per-partition order.
    """

    name = "kafka"

    def __init__(
        self,
        bootstrap: str,
        topic_for: Callable[[Message], str] = default_topic,
        *,
        linger_ms: int = 5,
        max_request_size: int = 1_048_576,
        request_timeout_ms: int = 15_000,
    ) -> None:
        self._bootstrap = bootstrap
        self._topic_for = topic_for
        self._max_request_size = max_request_size
        self._options = {
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": linger_ms,
            "max_request_size": max_request_size,
            "request_timeout_ms": request_timeout_ms,
            "max_batch_size": 256 * 1024,
        }
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        """Connect; a second call while started is a no-op (one producer, one order)."""
        if self._producer is not None:
            return
        producer = AIOKafkaProducer(bootstrap_servers=self._bootstrap, **self._options)
        try:
            await producer.start()
        except KafkaError as err:
            await producer.stop()
            raise PublishError(f"kafka unavailable: {err!r}") from err
        self._producer = producer

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def publish(self, messages: Sequence[Message]) -> list[Outcome]:
        if self._producer is None:
            raise PublishError("kafka publisher not started")
        producer = self._producer
        outcomes: list[Outcome] = [DEFERRED] * len(messages)
        refused: set[str] = set()
        sent: list[tuple[int, asyncio.Future[object]]] = []
        try:
            for i, m in enumerate(messages):
                if m.aggregateid in refused:
                    continue
                near_limit = len(m.payload) + SIZE_CHECK_MARGIN > self._max_request_size
                size = record_size(m) if near_limit else 0
                if size > self._max_request_size:
                    outcomes[i] = Outcome(
                        error=f"message is ~{size} bytes, over max_request_size "
                        f"{self._max_request_size}"
                    )
                    refused.add(m.aggregateid)
                    continue
                future = await producer.send(
                    self._topic_for(m),
                    m.payload,
                    key=m.aggregateid.encode(),
                    headers=m.kafka_headers(),
                )
                sent.append((i, future))
            # Awaited one by one rather than gathered: by the time the first completes
            # most others are done too, and awaiting a done future costs no loop turn.
            for i, future in sent:
                try:
                    await future
                except MessageSizeTooLargeError as err:
                    outcomes[i] = Outcome(error=f"kafka refused the size: {err!r}")
                else:
                    outcomes[i] = PUBLISHED
        except KafkaError as err:
            raise PublishError(f"kafka publish failed: {err!r}") from err
        return outcomes


def key_partition(key: bytes, partitions: int) -> int:
    """The partition aiokafka's default partitioner (Kafka's: murmur2) puts ``key`` in,
    among ``partitions``: where the relay's record for that key lands."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions
