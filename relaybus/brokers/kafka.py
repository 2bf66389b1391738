"""Kafka adapter (aiokafka): idempotent acks=all producer, key = aggregateid."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from relaybus.brokers.publisher import PublishError
from relaybus.message import Message


def default_topic(message: Message) -> str:
    """Debezium's outbox event router default: ``outbox.event.<aggregatetype>``."""
    return f"outbox.event.{message.aggregatetype}"


class KafkaPublisher:
    """Publishes to Kafka with ``acks=all`` and idempotence (no duplicates on producer retry).

    All messages of one ``publish`` call are sent without waiting in between, then
    awaited together; the idempotent producer keeps their order per partition, and a
    key always maps to one partition, so per-key order holds.
    """

    name = "kafka"

    def __init__(
        self,
        bootstrap: str,
        topic_for: Callable[[Message], str] = default_topic,
        *,
        linger_ms: int = 5,
        max_request_size: int = 1_048_576,
        request_timeout_ms: int = 30_000,
    ) -> None:
        self._topic_for = topic_for
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=linger_ms,
            max_request_size=max_request_size,
            request_timeout_ms=request_timeout_ms,
        )

    async def start(self) -> None:
        try:
            await self._producer.start()
        except KafkaError as err:
            raise PublishError(f"kafka unavailable: {err}", permanent=False) from err

    async def stop(self) -> None:
        await self._producer.stop()

    async def publish(self, messages: Sequence[Message]) -> None:
        futures = []
        try:
            for m in messages:
                headers = [(k, v.encode()) for k, v in m.headers().items()]
                futures.append(
                    await self._producer.send(
                        self._topic_for(m), m.payload, key=m.aggregateid.encode(), headers=headers
                    )
                )
            await asyncio.gather(*futures)
        except MessageSizeTooLargeError as err:
            raise PublishError(f"kafka rejected message size: {err}", permanent=True) from err
        except KafkaError as err:
            raise PublishError(f"kafka publish failed: {err!r}", permanent=False) from err
