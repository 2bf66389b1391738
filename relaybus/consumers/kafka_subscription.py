"""The one Kafka subscription core under every consume loop: the worker's
(``kafka_worker``), the stream runtime's (``relaybus.streams.runtime.kafka_loop``) and
the tail's (``tail``). Each loop states its own delivery contract (when it commits,
what it sends); the mechanics they share live here, once:

- the consumer's options: ``read_committed`` (transactional writers may abort),
  earliest offset for a new group, no auto-commit, heartbeats from the session
  timeout; a group (``subscribe``) or none (``assign``, for the tail);
- fetching: ``positions`` (per partition, the offset after the last record handed
  out); a record the client library cannot parse surfaces as ``Unreadable`` and is
  got past with ``skip`` (a stub dead letter through the caller's callback);
- ``rewind``: seek back to the first record of polled batches (offer them again);
- ``commit``: a commit the group refuses after a rebalance is logged, not raised
  (the partition's new owner redelivers, and inboxes / deterministic ids make that
  harmless);
- the copy producer (acks=all, idempotent, requests sized for the copy budget) and
  the copy topics (DLQ, retry tiers) created like their source with a matching
  ``max.message.bytes``;
- reading a record through the trust boundary: ``record_headers`` and
  ``decode_record`` (bounded, every refusal a named ``InvalidMessage``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from relaybus.brokers.kafka_admin import ensure_topic, topic_partitions
from relaybus.brokers.kafka_connection import KafkaTarget, kafka_client_options
from relaybus.consumers.failure import salvage_headers
from relaybus.consumers.incoming import Incoming, InvalidMessage, WireLimits, decode, read_headers
from relaybus.consumers.unreadable import OnUnreadable, skip_unreadable

log = logging.getLogger(__name__)

Record: TypeAlias = ConsumerRecord[Any, Any]
Batches: TypeAlias = dict[TopicPartition, list[Record]]
# Produce-request framing beyond a record's body and headers (generous).
REQUEST_OVERHEAD = 16 * 1024


class Unreadable(Exception):
    """A fetch failed because the client library could not parse a record (e.g. a
    header name that is not UTF-8); ``KafkaSubscription.skip`` gets past it."""

    def __init__(self, error: Exception) -> None:
        super().__init__(repr(error))
        self.error = error


class KafkaSubscription:
    """One consumer of ``topics``: in group ``group`` (or none: ``assign`` it), at most
    ``max_records`` records a fetch. Not started until ``start``."""

    def __init__(
        self,
        target: KafkaTarget,
        topics: Sequence[str],
        *,
        group: str | None,
        max_records: int,
        session_timeout_ms: int = 10_000,
        name: str = "",
    ) -> None:
        self.topics = list(topics)
        self.group = group
        self.max_records = max_records
        self.name = name or ",".join(self.topics)
        options: dict[str, Any] = {}
        if group is not None:
            options = {
                "group_id": group,
                "auto_offset_reset": "earliest",
                "session_timeout_ms": session_timeout_ms,
                "heartbeat_interval_ms": max(100, session_timeout_ms // 5),
            }
        self.consumer = AIOKafkaConsumer(
            **kafka_client_options(target),
            enable_auto_commit=False,
            isolation_level="read_committed",
            max_poll_records=max_records,
            **options,
        )
        # Per partition, the offset after the last record handed out.
        self.positions: dict[TopicPartition, int] = {}

    async def start(self, listener: ConsumerRebalanceListener | None = None) -> None:
        """Join the group (``listener`` hears revocations) or, without a group, only
        connect (``assign`` next)."""
        if self.group is not None:
            self.consumer.subscribe(self.topics, listener=listener)
        await self.consumer.start()

    async def stop(self) -> None:
        await self.consumer.stop()

    def assigned(self) -> bool:
        return bool(self.consumer.assignment())

    async def fetch(self, timeout_ms: int) -> Batches:
        """The next records (possibly none), per partition in offset order. Raises
        ``Unreadable`` for a record the client cannot parse; ``KafkaError`` as is."""
        try:
            batches: Batches = await self.consumer.getmany(
                timeout_ms=timeout_ms, max_records=self.max_records
            )
        except KafkaError:
            raise
        except Exception as err:  # the client could not parse a record
            raise Unreadable(err) from err
        for tp, records in batches.items():
            self.positions[tp] = records[-1].offset + 1
        return batches

    async def skip(
        self, unreadable: Unreadable, on_unreadable: OnUnreadable
    ) -> dict[TopicPartition, int]:
        """Get past the unreadable record (``skip_unreadable``): ``on_unreadable`` runs
        for it; returns the offsets to commit past it."""
        return await skip_unreadable(self.consumer, unreadable.error, self.positions, on_unreadable)

    def rewind(self, *polled: Batches) -> None:
        """Seek every partition of ``polled`` back to its earliest first record: the
        next fetches offer those records again (nothing lost, nothing skipped)."""
        back: dict[TopicPartition, int] = {}
        for batches in polled:
            for tp, records in batches.items():
                back[tp] = min(back.get(tp, records[0].offset), records[0].offset)
        for tp, offset in back.items():
            self.positions[tp] = offset
            with contextlib.suppress(IllegalStateError):  # revoked meanwhile
                self.consumer.seek(tp, offset)

    def forget(self, revoked: Collection[TopicPartition]) -> None:
        """Partitions taken away: whoever owns them next decides where they resume."""
        for tp in revoked:
            self.positions.pop(tp, None)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit ``offsets``; a commit the group refuses (it moved on) is logged."""
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as err:
            log.warning("%s: commit of %s failed: %r", self.name, offsets, err)


def copy_producer(target: KafkaTarget, copy_limit: int, **options: Any) -> AIOKafkaProducer:
    """A producer (not started) for outputs and copies: acks=all, idempotent, requests
    up to ``copy_limit`` bytes."""
    return AIOKafkaProducer(
        **kafka_client_options(target),
        acks="all",
        enable_idempotence=True,
        max_request_size=copy_limit,
        **options,
    )


async def prepare_copy_topics(
    target: KafkaTarget, source: str, copies: Sequence[str], copy_limit: int
) -> None:
    """``source`` (created if missing) and its copy topics, with as many partitions
    and a ``max.message.bytes`` of ``copy_limit``: a copy of anything a delivery may
    be fits."""
    await ensure_topic(target, source)
    partitions = len(await topic_partitions(target, source))
    for copy in copies:
        await ensure_topic(
            target, copy, partitions=partitions, config={"max.message.bytes": str(copy_limit)}
        )


@dataclass(frozen=True)
class Refused:
    """A record the trust boundary refused: its headers (as far as they are text) and
    the named reason, for its dead letter."""

    headers: dict[str, str]
    error: InvalidMessage


def record_headers(record: Record, limits: WireLimits) -> dict[str, str] | Refused:
    """The record's headers as bounded text, or ``Refused`` with what could be salvaged."""
    pairs = record.headers or ()
    try:
        return read_headers(pairs, limits)
    except InvalidMessage as err:
        return Refused(salvage_headers(pairs, limits), err)


def record_key(record: Record) -> str:
    """The record's key as text (undecodable bytes replaced: a key only routes)."""
    return record.key.decode("utf-8", errors="replace") if record.key else ""


def decode_record(
    record: Record,
    headers: dict[str, str],
    limits: WireLimits,
    *,
    source: str,
    partition: int | None,
    offset: int | None,
    accepted_types: Collection[str] | None,
    require_object: bool,
    attempt: int = 1,
) -> Incoming | Refused:
    """The record as a message (``incoming.decode``: bounded, total), or ``Refused``.
    ``partition``/``offset`` are where it came from (a retry copy names its
    original's; None: unknown)."""
    try:
        return decode(
            record.value or b"",
            headers,
            key=record_key(record),
            source=source,
            partition=partition,
            offset=offset,
            attempt=attempt,
            accepted_types=accepted_types,
            max_bytes=limits.max_bytes,
            require_object=require_object,
        )
    except InvalidMessage as err:
        return Refused(headers, err)


class Subscription(Protocol):
    """What a consume loop needs of its subscription (``KafkaSubscription``; the
    in-memory broker's for tests)."""

    positions: dict[TopicPartition, int]

    async def start(self, listener: ConsumerRebalanceListener | None = None) -> None: ...

    async def stop(self) -> None: ...

    def assigned(self) -> bool: ...

    async def fetch(self, timeout_ms: int) -> Batches: ...

    async def skip(
        self, unreadable: Unreadable, on_unreadable: OnUnreadable
    ) -> dict[TopicPartition, int]: ...

    def rewind(self, *polled: Batches) -> None: ...

    def forget(self, revoked: Collection[TopicPartition]) -> None: ...

    async def commit(self, offsets: dict[TopicPartition, int]) -> None: ...


class CopyProducer(Protocol):
    """What a consume loop needs to send copies: ``send`` returns the broker's ack."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(
        self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> Any: ...


class Transport(Protocol):
    """Where a worker's records come from and its copies go: real Kafka
    (``KafkaTransport``) or the in-memory broker, under the same consume loop."""

    async def prepare(self, source: str, copies: Sequence[str], copy_limit: int) -> None: ...

    def subscription(
        self, topics: Sequence[str], *, group: str, max_records: int, session_timeout_ms: int
    ) -> Subscription: ...

    def producer(self, copy_limit: int) -> CopyProducer: ...


class _AckedProducer:
    """An ``AIOKafkaProducer`` as a ``CopyProducer``."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer

    async def start(self) -> None:
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()

    async def send(
        self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> Any:
        return await self.producer.send(topic, value=value, key=key, headers=headers)


class KafkaTransport:
    """Real Kafka at ``target``."""

    def __init__(self, target: KafkaTarget) -> None:
        self.target = target

    async def prepare(self, source: str, copies: Sequence[str], copy_limit: int) -> None:
        await prepare_copy_topics(self.target, source, copies, copy_limit)

    def subscription(
        self, topics: Sequence[str], *, group: str, max_records: int, session_timeout_ms: int
    ) -> Subscription:
        return KafkaSubscription(
            self.target,
            topics,
            group=group,
            max_records=max_records,
            session_timeout_ms=session_timeout_ms,
            name=",".join(topics),
        )

    def producer(self, copy_limit: int) -> CopyProducer:
        return _AckedProducer(copy_producer(self.target, copy_limit))
