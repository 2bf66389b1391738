"""Getting a Kafka consumer past a record its client library cannot parse."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

log = logging.getLogger(__name__)

OnUnreadable = Callable[[TopicPartition, int, Exception], Awaitable[None]]


async def skip_unreadable(
    consumer: AIOKafkaConsumer,
    err: Exception,
    positions: dict[TopicPartition, int],
    on_unreadable: OnUnreadable,
) -> dict[TopicPartition, int]:
    """Get past a record the client library cannot parse (e.g. a header name that is
    not UTF-8): every fetch of its partition would raise forever otherwise.

    The failed fetch may have consumed records of other partitions that never reached
    the caller: every partition is first sought back to ``positions`` (the offset after
    the last record handed out; else the committed offset, else the beginning). Then
    each is fetched alone, one record at a time; for the one that raises,
    ``on_unreadable(tp, offset, error)`` runs (a stub dead letter) and the consumer
    moves one offset past it. Returns ``{tp: offset after the skipped record}``: the
    caller updates its positions and commits those offsets. Updates ``positions``.
    """
    log.warning("a fetch failed to parse: %r; locating the record", err)
    skipped: dict[TopicPartition, int] = {}
    assigned = sorted(consumer.assignment())
    for tp in assigned:
        if tp in positions:
            consumer.seek(tp, positions[tp])
        else:
            committed = await consumer.committed(tp)
            if committed is not None:
                consumer.seek(tp, committed)
            else:
                await consumer.seek_to_beginning(tp)
    consumer.pause(*assigned)
    try:
        for tp in assigned:
            consumer.resume(tp)
            try:
                position = await consumer.position(tp)
                try:
                    found = await consumer.getmany(tp, timeout_ms=1000, max_records=1)
                except KafkaError:
                    raise
                except Exception as bad:
                    await on_unreadable(tp, position, bad)
                    log.warning(
                        "%s: skipped unreadable record %d/%d: %r",
                        tp.topic,
                        tp.partition,
                        position,
                        bad,
                    )
                    consumer.seek(tp, position + 1)
                    positions[tp] = position + 1
                    skipped[tp] = position + 1
                else:
                    for record in found.get(tp, [])[:1]:
                        consumer.seek(tp, record.offset)  # not handled yet: read again
            finally:
                consumer.pause(tp)
    finally:
        consumer.resume(*assigned)
    return skipped
