"""Kafka adapter (aiokafka): idempotent acks=all producer, key = aggregateid."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from aiokafka.partitioner import murmur2

from relaybus.brokers.kafka_connection import KafkaTarget, kafka_client_options
from relaybus.brokers.kafka_failover import LeaderWatch
from relaybus.brokers.publisher import DEFERRED, PUBLISHED, Outcome, PublishError
from relaybus.brokers.stalls import LateSends, Stall, retrieve_quietly
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

    Partitions fail independently: a send its partition has not acknowledged within
    ``stall_after`` seconds is returned *deferred* (the call returns; the other
    partitions' outcomes are final) and remembered as late (``LateSends``), and
    until the partition answers, later messages to it are deferred unsent. The
    late send stays with the producer, which keeps retrying it in order; publishing
    the same message again returns its real outcome without sending it twice. While
    a partition is stalled, ``LeaderWatch`` asks the other brokers for its leader
    every ``stall_after / 4`` s and moves the producer to a new leader as soon as
    the cluster elects one (see there). ``stalls()`` reports the stalled partitions.
    """

    name = "kafka"

    def __init__(
        self,
        bootstrap: KafkaTarget,
        topic_for: Callable[[Message], str] = default_topic,
        *,
        linger_ms: int = 5,
        max_request_size: int = 1_048_576,
        request_timeout_ms: int = 15_000,
        stall_after: float = 2.0,
    ) -> None:
        self._bootstrap = bootstrap
        self._topic_for = topic_for
        self._max_request_size = max_request_size
        self._stall_after = stall_after
        self._late = LateSends()
        self._watch: LeaderWatch | None = None
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
        producer = AIOKafkaProducer(**kafka_client_options(self._bootstrap), **self._options)
        try:
            await producer.start()
        except KafkaError as err:
            await producer.stop()
            raise PublishError(f"kafka unavailable: {err!r}") from err
        self._producer = producer
        self._late.abandon()  # a new producer: the old one's sends are gone
        self._late = LateSends()
        self._watch = LeaderWatch(producer.client, self._late, interval=self._stall_after / 4)
        self._watch.start()

    async def stop(self) -> None:
        if self._watch is not None:
            await self._watch.stop()
            self._watch = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    def stalls(self) -> list[Stall]:
        """Partitions with sends unanswered for longer than ``stall_after``."""
        if self._watch is None:
            return []
        return self._watch.stalls()

    def _partition(self, topic: str, key: bytes) -> TopicPartition | None:
        """The partition the producer's default partitioner picks for ``key`` (None
        while the topic's metadata is unknown: such a send is tracked by the call
        but cannot be deferred ahead of time)."""
        assert self._producer is not None
        partitions = self._producer.client.cluster.partitions_for_topic(topic)
        if not partitions:
            return None
        return TopicPartition(topic, sorted(partitions)[key_partition(key, len(partitions))])

    async def publish(self, messages: Sequence[Message]) -> list[Outcome]:
        if self._producer is None:
            raise PublishError("kafka publisher not started")
        producer = self._producer
        late = self._late
        late.sweep()
        stalled = late.stalled_destinations()
        outcomes: list[Outcome] = [DEFERRED] * len(messages)
        # Keys with a message not sent in this call (refused, or deferred): their
        # later messages in the call are deferred too, never sent ahead of it.
        holding: set[str] = set()
        sent: list[tuple[int, TopicPartition | None, asyncio.Future[object]]] = []
        try:
            for i, m in enumerate(messages):
                if m.aggregateid in holding:
                    continue
                earlier = late.answer(m.id)
                if earlier is not None:
                    # Sent before and not answered in time: its real outcome now (a
                    # send that failed meanwhile is deferred once, then sent again).
                    if earlier:
                        outcomes[i] = PUBLISHED
                    else:
                        holding.add(m.aggregateid)
                    continue
                near_limit = len(m.payload) + SIZE_CHECK_MARGIN > self._max_request_size
                size = record_size(m) if near_limit else 0
                if size > self._max_request_size:
                    outcomes[i] = Outcome(
                        error=f"message is ~{size} bytes, over max_request_size "
                        f"{self._max_request_size}"
                    )
                    holding.add(m.aggregateid)
                    continue
                topic = self._topic_for(m)
                key = m.aggregateid.encode()
                tp = self._partition(topic, key)
                if tp in stalled:
                    # Deferred: it would only queue behind the unanswered sends.
                    holding.add(m.aggregateid)
                    continue
                future = await producer.send(topic, m.payload, key=key, headers=m.kafka_headers())
                # A topic's first send fetched its metadata: its partition is known now.
                sent.append((i, tp or self._partition(topic, key), future))
            if sent:
                await asyncio.wait([f for _, _, f in sent], timeout=self._stall_after)
            now = time.time()
            for i, tp, future in sent:
                if not future.done():
                    # Its partition has not answered: leave it to the producer, tell
                    # the caller it is not known published, remember it.
                    late.remember(messages[i].id, tp, future, now - self._stall_after)
                    continue
                try:
                    future.result()
                except MessageSizeTooLargeError as err:
                    outcomes[i] = Outcome(error=f"kafka refused the size: {err!r}")
                else:
                    outcomes[i] = PUBLISHED
        except KafkaError as err:
            # The call's other sends are not looked at again: their rows are
            # republished (at least once); their failures are not to be reported.
            for _, _, future in sent:
                future.add_done_callback(retrieve_quietly)
            raise PublishError(f"kafka publish failed: {err!r}") from err
        return outcomes


def key_partition(key: bytes, partitions: int) -> int:
    """The partition aiokafka's default partitioner (Kafka's: murmur2) puts ``key`` in,
    among ``partitions``: where the relay's record for that key lands."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions
