"""Following a Kafka topic in every process (publish/subscribe, no consumer group)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from relaybus.backoff import Backoff
from relaybus.brokers.kafka_admin import topic_partitions
from relaybus.brokers.kafka_connection import KafkaTarget
from relaybus.consumers.kafka_subscription import KafkaSubscription, Unreadable

log = logging.getLogger(__name__)

OnRecord = Callable[[int, int, bytes | None, bytes | None], None]


class TailUnavailable(RuntimeError):
    """The topic could not be reached or read at start."""


class KafkaTail:
    """Delivers every record appended to ``topic`` after ``start`` to this process.

    No consumer group: each process that tails the topic sees every record (the
    notes' publish/subscribe, as opposed to a group's point-to-point). Nothing is
    committed; a restarted process starts again at the end. ``read_committed``.

    ``position[p]`` is the offset of the last record of partition ``p`` handed to the
    callback (at start: the last record already in the topic, -1 if none), so a
    reader can tell whether another component has caught up with what this process
    has seen. A record the client cannot parse is skipped (logged).
    """

    def __init__(self, bootstrap: KafkaTarget, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.position: dict[int, int] = {}
        self.partitions = 0
        self._subscription: KafkaSubscription | None = None

    async def start(self) -> None:
        """Assign every partition at its end (the records after this are delivered)."""
        parts = [
            TopicPartition(self.topic, p)
            for p in await topic_partitions(self.bootstrap, self.topic)
        ]
        subscription = KafkaSubscription(
            self.bootstrap, [self.topic], group=None, max_records=1000, name=f"tail {self.topic}"
        )
        await subscription.start()
        consumer = subscription.consumer
        consumer.assign(parts)
        await consumer.seek_to_end(*parts)
        for tp in parts:
            end = await consumer.position(tp)
            self.position[tp.partition] = end - 1
            subscription.positions[tp] = end
        self.partitions = len(parts)
        self._subscription = subscription

    async def run(self, stop: asyncio.Event, on_record: OnRecord) -> None:
        """Call ``on_record(partition, offset, key, value)`` for each record, in
        partition order, until ``stop``; then close. Broker errors are retried with
        backoff (the positions stay where they were)."""
        subscription = self._subscription
        assert subscription is not None, "start() first"
        backoff = Backoff(initial=0.2, maximum=5.0)
        try:
            while not stop.is_set():
                try:
                    batches = await subscription.fetch(timeout_ms=200)
                except KafkaError as err:
                    log.warning("tail %s: %r; retrying", self.topic, err)
                    await asyncio.sleep(backoff.next_delay())
                    continue
                except Unreadable as err:
                    await subscription.skip(err, _ignore)
                    continue
                backoff.reset()
                for tp, records in batches.items():
                    for record in records:
                        on_record(tp.partition, record.offset, record.key, record.value)
                        self.position[tp.partition] = record.offset
        finally:
            await subscription.stop()


async def _ignore(tp: TopicPartition, offset: int, error: Exception) -> None:
    log.warning(
        "tail %s: skipped unreadable record %d/%d: %r", tp.topic, tp.partition, offset, error
    )
