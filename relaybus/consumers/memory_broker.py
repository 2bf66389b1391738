"""An in-memory broker: a ``Publisher`` for the relay and a ``Transport`` for the
worker's consume loop, so handlers run without Kafka or RabbitMQ (unit tests).

Its records go through the **same** consume loop as Kafka's (``kafka_worker``): the
trust boundary's decoding, per-key buckets, retry tiers as topics, dead letters with
their reason, commits after the verdict. What differs is only where records live:

- a topic is one partition (partition 0): every key is in order;
- ``publish`` writes each message to ``<topic_prefix><aggregatetype>`` (the relay's
  Kafka topic) and to every queue whose binding matches its type (a RabbitMQ topic
  exchange: ``*`` one word, ``#`` any number); a ``RabbitSource`` handler reads its
  queue as a topic named after it, its retry and dead-letter copies go to
  ``<queue>.retry.<n>`` / ``<queue>.dlq`` like a Kafka source's;
- a consumer group's position is shared by its members (competing consumers); each
  group reads every record (publish/subscribe);
- nothing is lost or duplicated by the broker itself; ``down = True`` makes
  ``publish`` raise ``PublishError`` like an outage.

``idle()`` waits until every record published so far has been committed by every
subscription of its topic (and the copies they made, in turn): the synchronisation
point of a test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

from relaybus.brokers.publisher import PUBLISHED, Outcome, PublishError
from relaybus.brokers.stalls import Stall
from relaybus.consumers.kafka_subscription import (
    Batches,
    CopyProducer,
    Record,
    Subscription,
    Unreadable,
)
from relaybus.consumers.unreadable import OnUnreadable
from relaybus.message import Message


def binding_matches(binding: str, routing_key: str) -> bool:
    """AMQP topic-exchange matching: ``*`` is one word, ``#`` zero or more."""
    pattern, words = binding.split("."), routing_key.split(".")

    def match(i: int, j: int) -> bool:
        if i == len(pattern):
            return j == len(words)
        if pattern[i] == "#":
            return any(match(i + 1, k) for k in range(j, len(words) + 1))
        if j == len(words):
            return False
        return pattern[i] in ("*", words[j]) and match(i + 1, j + 1)

    return match(0, 0)


@dataclass
class _Topic:
    records: list[Record] = field(default_factory=list)
    # group -> offset after the last record handed out / committed
    handed: dict[str, int] = field(default_factory=dict)
    committed: dict[str, int] = field(default_factory=dict)


class InMemoryBroker:
    """Topics in memory; see the module docstring for its contract."""

    def __init__(self, topic_prefix: str = "outbox.event.", name: str = "memory") -> None:
        self.name = name
        self.topic_prefix = topic_prefix
        self.down = False
        self._topics: dict[str, _Topic] = {}
        self._bindings: dict[str, str] = {}  # queue -> binding
        self._changed = asyncio.Condition()

    # -- publishing ---------------------------------------------------------------
    async def start(self) -> None:
        if self.down:
            raise PublishError(f"{self.name} unavailable")

    async def stop(self) -> None:
        return None

    def stalls(self) -> list[Stall]:
        return []

    def bind(self, queue: str, binding: str) -> None:
        """Declare ``queue`` bound with ``binding`` (a ``RabbitSource``)."""
        self._bindings[queue] = binding
        self._topic(queue)

    async def publish(self, messages: Sequence[Message]) -> list[Outcome]:
        """Each message to its Kafka topic and to every matching queue, in order."""
        if self.down:
            raise PublishError(f"{self.name} unavailable")
        for message in messages:
            key = message.aggregateid.encode()
            headers = message.kafka_headers()
            await self.append(
                self.topic_prefix + message.aggregatetype, message.payload, key, headers
            )
            for queue, binding in self._bindings.items():
                if binding_matches(binding, message.type):
                    await self.append(queue, message.payload, key, headers)
        return [PUBLISHED] * len(messages)

    async def append(
        self, topic: str, value: bytes, key: bytes | None, headers: Sequence[tuple[str, bytes]]
    ) -> int:
        """Append one record as any client could write it (no checks); its offset."""
        log = self._topic(topic)
        offset = len(log.records)
        log.records.append(
            ConsumerRecord(
                topic=topic,
                partition=0,
                offset=offset,
                timestamp=int(time.time() * 1000),
                timestamp_type=0,
                key=key,
                value=value,
                checksum=None,
                serialized_key_size=len(key or b""),
                serialized_value_size=len(value),
                headers=list(headers),
            )
        )
        async with self._changed:
            self._changed.notify_all()
        return offset

    def records(self, topic: str) -> list[Record]:
        """Every record of ``topic`` so far, in order."""
        return list(self._topic(topic).records)

    def topics(self) -> list[str]:
        return sorted(self._topics)

    async def idle(self, timeout: float = 30.0) -> None:
        """Wait until every subscribed group has committed everything of its topics
        (copies included); ``TimeoutError`` after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(self._settled)

    def _settled(self) -> bool:
        return all(
            offset == len(log.records)
            for log in self._topics.values()
            for offset in log.committed.values()
        )

    def _topic(self, name: str) -> _Topic:
        return self._topics.setdefault(name, _Topic())

    # -- the consume loop's transport ---------------------------------------------
    async def prepare(self, source: str, copies: Sequence[str], copy_limit: int) -> None:
        for topic in (source, *copies):
            self._topic(topic)

    def subscription(
        self, topics: Sequence[str], *, group: str, max_records: int, session_timeout_ms: int
    ) -> Subscription:
        return _MemorySubscription(self, list(topics), group, max_records)

    def producer(self, copy_limit: int) -> CopyProducer:
        return _MemoryProducer(self)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


class _MemoryProducer:
    def __init__(self, broker: InMemoryBroker) -> None:
        self.broker = broker

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def send(
        self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> Any:
        await self.broker.append(topic, value, key, headers)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class _MemorySubscription:
    """A group's reading of in-memory topics, with the ``Subscription`` contract."""

    def __init__(self, broker: InMemoryBroker, topics: list[str], group: str, max_records: int):
        self.broker, self.topics, self.group, self.max_records = broker, topics, group, max_records
        self.positions: dict[TopicPartition, int] = {}
        self.started = False

    async def start(self, listener: ConsumerRebalanceListener | None = None) -> None:
        for topic in self.topics:
            log = self.broker._topic(topic)
            log.handed.setdefault(self.group, log.committed.setdefault(self.group, 0))
        self.started = True
        await self.broker._notify()

    async def stop(self) -> None:
        self.started = False

    def assigned(self) -> bool:
        return self.started

    def _take(self) -> Batches:
        batches: Batches = {}
        for topic in self.topics:
            log = self.broker._topic(topic)
            start = log.handed[self.group]
            taken = log.records[start : start + self.max_records]
            if taken:
                log.handed[self.group] = start + len(taken)
                tp = TopicPartition(topic, 0)
                batches[tp] = taken
                self.positions[tp] = taken[-1].offset + 1
        return batches

    async def fetch(self, timeout_ms: int) -> Batches:
        batches = self._take()
        if batches:
            return batches
        try:
            async with asyncio.timeout(timeout_ms / 1000):
                async with self.broker._changed:
                    await self.broker._changed.wait_for(self._has_more)
        except TimeoutError:
            return {}
        return self._take()

    def _has_more(self) -> bool:
        return any(
            self.broker._topic(t).handed[self.group] < len(self.broker._topic(t).records)
            for t in self.topics
        )

    async def skip(
        self, unreadable: Unreadable, on_unreadable: OnUnreadable
    ) -> dict[TopicPartition, int]:
        raise unreadable  # in-memory records are always readable

    def rewind(self, *polled: Batches) -> None:
        for batches in polled:
            for tp, records in batches.items():
                log = self.broker._topic(tp.topic)
                log.handed[self.group] = min(log.handed[self.group], records[0].offset)
                self.positions[tp] = log.handed[self.group]

    def forget(self, revoked: Collection[TopicPartition]) -> None:
        for tp in revoked:
            self.positions.pop(tp, None)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            log = self.broker._topic(tp.topic)
            log.committed[self.group] = max(log.committed.get(self.group, 0), offset)
        await self.broker._notify()
