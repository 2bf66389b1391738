"""Kafka administration: topics (create if missing), offsets, group starts, plain produce."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from relaybus.brokers.kafka_connection import KafkaTarget, kafka_client_options

log = logging.getLogger(__name__)

# Seconds `consumer_lag` waits for one topic's end offsets before showing them unknown.
END_OFFSETS_TIMEOUT = 10.0


@contextmanager
def reaching(bootstrap: KafkaTarget) -> Iterator[None]:
    """Turn a Kafka client error inside the block into ``ConnectionError`` (an
    ``OSError``), so callers outside the adapters handle one kind of "unreachable"."""
    try:
        yield
    except KafkaError as err:
        raise ConnectionError(f"Kafka at {bootstrap}: {err!r}") from err


def committed_reader(bootstrap: KafkaTarget, **options: Any) -> AIOKafkaConsumer:
    """A consumer (not started) that reads only what producers committed.

    Every operator read (replay, lag, DLQ tools, the console) goes through this:
    with the client default ``read_uncommitted`` a copy of a transactional topic
    (the saga's) would republish records of *aborted* transactions. Its end offsets
    are the last stable offsets. Never auto-commits.
    """
    return AIOKafkaConsumer(
        **kafka_client_options(bootstrap),
        enable_auto_commit=False,
        isolation_level="read_committed",
        **options,
    )


async def read_to(
    consumer: AIOKafkaConsumer, todo: set[TopicPartition], ends: Mapping[TopicPartition, int]
) -> None:
    """Drop from ``todo`` each partition whose position reached its end offset.

    The end condition of every bounded read: a transactional topic's last offsets
    are commit markers that are never returned as records, and a concurrent purge
    moves the start past what was asked, so "the record at ``end - 1`` was seen"
    may never happen, while the position always gets there.
    """
    for tp in list(todo):
        if await consumer.position(tp) >= ends[tp]:
            todo.discard(tp)


async def ensure_topic(
    bootstrap: KafkaTarget,
    topic: str,
    partitions: int = 3,
    replication: int = 1,
    config: dict[str, str] | None = None,
) -> bool:
    """Create ``topic`` (with topic ``config``) unless it exists; True if this call
    created it. An existing topic's config is left as it is."""
    admin = AIOKafkaAdminClient(**kafka_client_options(bootstrap))
    await admin.start()
    try:
        if topic in await admin.list_topics():
            return False
        try:
            await admin.create_topics(
                [NewTopic(topic, partitions, replication, topic_configs=config or {})]
            )
        except TopicAlreadyExistsError:
            return False
        return True
    finally:
        await admin.close()


async def list_topics(bootstrap: KafkaTarget) -> set[str]:
    """The names of every topic in the cluster."""
    admin = AIOKafkaAdminClient(**kafka_client_options(bootstrap))
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def topic_partitions(bootstrap: KafkaTarget, topic: str, timeout: float = 15.0) -> list[int]:
    """Partition numbers of ``topic``, waiting up to ``timeout`` for a new topic to appear."""
    admin = AIOKafkaAdminClient(**kafka_client_options(bootstrap))
    await admin.start()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while True:
            described = await admin.describe_topics([topic])
            parts = sorted(p["partition"] for d in described for p in d.get("partitions", []))
            if parts:
                return parts
            if loop.time() > deadline:
                raise LookupError(f"kafka topic {topic!r} does not exist")
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def end_offsets(bootstrap: KafkaTarget, topic: str) -> dict[int, int]:
    """The end offset of each partition of ``topic`` (its last stable offset: what a
    ``read_committed`` reader can reach)."""
    consumer = committed_reader(bootstrap)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in await topic_partitions(bootstrap, topic)]
        return {tp.partition: end for tp, end in (await consumer.end_offsets(parts)).items()}
    finally:
        await consumer.stop()


async def start_group_at(
    bootstrap: KafkaTarget, group: str, topic: str, offsets: Mapping[int, int]
) -> None:
    """Commit ``offsets`` (partition -> offset) for ``group``, a new group or one
    without live members: it starts there. (Assigned, not subscribed: a commit
    outside any generation, which the coordinator accepts only for a group without
    members.)"""
    consumer = AIOKafkaConsumer(
        **kafka_client_options(bootstrap), group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        positions = {TopicPartition(topic, p): o for p, o in offsets.items()}
        consumer.assign(list(positions))
        await consumer.commit(positions)
    finally:
        await consumer.stop()


async def produce_records(
    bootstrap: KafkaTarget, topic: str, records: list[tuple[bytes | None, bytes, dict[str, str]]]
) -> None:
    """Produce (key, value, headers) records in order and wait for all acks."""
    producer = AIOKafkaProducer(**kafka_client_options(bootstrap), acks="all")
    await producer.start()
    try:
        for key, value, headers in records:
            await producer.send(
                topic, value=value, key=key, headers=[(k, v.encode()) for k, v in headers.items()]
            )
        await producer.flush()
    finally:
        await producer.stop()


async def group_offsets(bootstrap: KafkaTarget, group: str, topic: str) -> dict[int, int]:
    """The offsets ``group`` has committed on ``topic`` (partition -> next offset to
    read); a partition with no commit is left out. ``ConnectionError`` when Kafka
    cannot be asked."""
    admin = AIOKafkaAdminClient(**kafka_client_options(bootstrap))
    with reaching(bootstrap):
        await admin.start()
        try:
            committed = await admin.list_consumer_group_offsets(group)
        finally:
            await admin.close()
    return {
        tp.partition: meta.offset
        for tp, meta in committed.items()
        if tp.topic == topic and meta.offset >= 0
    }


@dataclass(frozen=True)
class PartitionLag:
    """Where one group stands on one partition: its committed offset (the next
    record it will read), the partition's end offset (high watermark) and the
    difference, the records waiting for it. ``end`` (and so ``lag``) is None when the
    partition's end offset could not be read in time (no leader answering: a broker
    down, a leader being moved)."""

    group: str
    topic: str
    partition: int
    committed: int
    end: int | None

    @property
    def lag(self) -> int | None:
        return None if self.end is None else max(0, self.end - self.committed)


async def consumer_lag(bootstrap: KafkaTarget, group: str | None = None) -> list[PartitionLag]:
    """Every committed offset of ``group`` (or of every consumer group), next to its
    partition's end offset; sorted by group, topic, partition. A partition the group
    has never committed on is not listed (as ``kafka-consumer-groups`` leaves its
    offset unknown). A topic whose end offsets are not answered within
    ``END_OFFSETS_TIMEOUT`` seconds (a partition without a leader) is listed with
    ``end`` None, the others as they are: one stuck partition does not hide the rest.
    Raises ``LookupError`` for a ``group`` that has no offsets, and ``ConnectionError``
    when Kafka cannot be asked."""
    with reaching(bootstrap):
        return await _consumer_lag(bootstrap, group)


async def _consumer_lag(bootstrap: KafkaTarget, group: str | None) -> list[PartitionLag]:
    admin = AIOKafkaAdminClient(**kafka_client_options(bootstrap))
    await admin.start()
    try:
        if group is None:
            groups = sorted(str(g[0]) for g in await admin.list_consumer_groups())
        else:
            groups = [group]
        committed: dict[str, dict[TopicPartition, int]] = {}
        for name in groups:
            offsets = await admin.list_consumer_group_offsets(name)
            committed[name] = {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}
    finally:
        await admin.close()
    if group is not None and not committed[group]:
        raise LookupError(f"consumer group {group!r} has no committed offsets")
    partitions = {tp for offsets in committed.values() for tp in offsets}
    if not partitions:
        return []
    by_topic: dict[str, list[TopicPartition]] = {}
    for tp in partitions:
        by_topic.setdefault(tp.topic, []).append(tp)
    ends: dict[TopicPartition, int] = {}

    async def read_ends(topic: str, tps: list[TopicPartition]) -> None:
        try:
            ends.update(await asyncio.wait_for(consumer.end_offsets(tps), END_OFFSETS_TIMEOUT))
        except (TimeoutError, KafkaError) as err:
            log.warning("lag: the end offsets of %s were not read (%r): shown as unknown",
                        topic, err)  # fmt: skip

    consumer = committed_reader(bootstrap)
    await consumer.start()
    try:
        # A topic at a time, side by side: aiokafka asks for all partitions at once and
        # waits out its whole request timeout for the slowest leader.
        await asyncio.gather(*(read_ends(t, tps) for t, tps in by_topic.items()))
    finally:
        await consumer.stop()
    return sorted(
        (
            PartitionLag(name, tp.topic, tp.partition, offset, ends.get(tp))
            for name, offsets in committed.items()
            for tp, offset in offsets.items()
        ),
        key=lambda row: (row.group, row.topic, row.partition),
    )


@dataclass(frozen=True)
class PartitionWindow:
    """The records of one partition whose timestamps fall in a window: offsets
    ``start`` (first in the window) to ``end`` (first after it, exclusive), and the
    first and last record's timestamps (epoch ms; None when the window is empty).
    ``count`` is ``end - start``: exact for a plain topic; a transactional topic's
    commit markers take offsets too, so there it is an upper bound."""

    partition: int
    start: int
    end: int
    first_timestamp: int | None
    last_timestamp: int | None

    @property
    def count(self) -> int:
        return self.end - self.start


async def time_window(
    bootstrap: KafkaTarget, topic: str, since_ms: int, until_ms: int | None = None
) -> list[PartitionWindow]:
    """Per partition of ``topic``, the offsets of the records with ``since_ms <=
    timestamp < until_ms`` (``until_ms`` None: up to the end), found with
    ``offsets_for_times`` (the broker's time index), and the timestamps of the first
    and last of them. Raises ``LookupError`` if the topic does not exist and
    ``ConnectionError`` when Kafka cannot be asked."""
    with reaching(bootstrap):
        return await _time_window(bootstrap, topic, since_ms, until_ms)


async def _time_window(
    bootstrap: KafkaTarget, topic: str, since_ms: int, until_ms: int | None
) -> list[PartitionWindow]:
    # Listed first: describing a missing topic can make the broker create it.
    if topic not in await list_topics(bootstrap):
        raise LookupError(f"kafka topic {topic!r} does not exist")
    partitions = await topic_partitions(bootstrap, topic, timeout=3.0)
    consumer = committed_reader(bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        ends = await consumer.end_offsets(tps)
        starts = await consumer.offsets_for_times(dict.fromkeys(tps, since_ms))
        stops = (
            await consumer.offsets_for_times(dict.fromkeys(tps, until_ms))
            if until_ms is not None
            else {}
        )
        windows = []
        for tp in tps:
            found = starts.get(tp)
            start = found.offset if found is not None else ends[tp]
            stop = stops.get(tp)
            end = stop.offset if stop is not None else ends[tp]
            end = max(start, end)
            first = found.timestamp if found is not None and start < end else None
            last = await _timestamp_before(consumer, tp, start, end) if start < end else None
            windows.append(PartitionWindow(tp.partition, start, end, first, last))
        return windows
    finally:
        await consumer.stop()


async def _timestamp_before(
    consumer: AIOKafkaConsumer, tp: TopicPartition, start: int, end: int
) -> int | None:
    """The timestamp of the last record in ``[start, end)`` of ``tp`` (reads back
    from ``end`` a little at a time: a transactional topic's last offsets can be
    markers, which are not records)."""
    consumer.assign([tp])
    step = 1
    while True:
        begin = max(start, end - step)
        consumer.seek(tp, begin)
        last: int | None = None
        todo = {tp}
        while todo:
            batch = await consumer.getmany(tp, timeout_ms=1000)
            records = [r for r in batch.get(tp, []) if r.offset < end]
            if records:
                last = records[-1].timestamp
            if len(records) < len(batch.get(tp, [])):
                break
            await read_to(consumer, todo, {tp: end})
        if last is not None or begin == start:
            return last
        step *= 16
