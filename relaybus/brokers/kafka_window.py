"""Reading a topic's time window without a consumer group: nothing committed, nothing
joined, so no live consumer and no lag report can tell the read happened."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiokafka import TopicPartition

from relaybus.brokers.kafka_admin import PartitionWindow, committed_reader, reaching, read_to
from relaybus.brokers.kafka_connection import KafkaTarget

FETCH_RECORDS = 500


@dataclass(frozen=True)
class WindowRecord:
    """One record as the broker holds it: untrusted bytes and header pairs."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp: int


async def read_window(
    bootstrap: KafkaTarget, topic: str, windows: list[PartitionWindow]
) -> AsyncIterator[list[WindowRecord]]:
    """The committed records of ``windows`` of ``topic``, in offset order per partition,
    in batches (bounded memory). Assigned partitions, no group, no offset commits.
    Raises ``ConnectionError`` when Kafka cannot be reached."""
    ends = {w.partition: w.end for w in windows if w.count}
    if not ends:
        return
    with reaching(bootstrap):
        consumer = committed_reader(bootstrap, max_poll_records=FETCH_RECORDS)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in ends]
            consumer.assign(tps)
            for w in windows:
                if w.count:
                    consumer.seek(TopicPartition(topic, w.partition), w.start)
            todo = set(tps)
            while todo:
                batches = await consumer.getmany(*todo, timeout_ms=1000)
                for tp, records in batches.items():
                    end = ends[tp.partition]
                    inside = [r for r in records if r.offset < end]
                    if len(inside) < len(records):
                        todo.discard(tp)
                    if inside:
                        yield [
                            WindowRecord(
                                tp.partition,
                                r.offset,
                                r.key,
                                r.value,
                                tuple(r.headers),
                                r.timestamp,
                            )
                            for r in inside
                        ]
                await read_to(consumer, todo, {tp: ends[tp.partition] for tp in todo})
        finally:
            await consumer.stop()
