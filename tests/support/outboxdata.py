"""Writing events through the real outbox and reading what reached Kafka."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.brokers.kafka_admin import ensure_topic, topic_partitions
from relaybus.db import session_factory
from relaybus.outbox.writer import Outbox
from tests.support.poll import eventually


@dataclass(frozen=True)
class Event:
    key: str
    type: str
    payload: Any


async def enqueue(
    engine: AsyncEngine, aggregate_type: str, events: Sequence[Event], chunk: int = 200
) -> list[uuid.UUID]:
    """Commit ``events`` through ``Outbox.enqueue``, ``chunk`` per transaction, in order."""
    outbox = Outbox()
    sessions = session_factory(engine)
    ids: list[uuid.UUID] = []
    for start in range(0, len(events), chunk):
        async with sessions() as session, session.begin():
            for e in events[start : start + chunk]:
                ids.append(
                    await outbox.enqueue(
                        session,
                        aggregate_type=aggregate_type,
                        aggregate_id=e.key,
                        type=e.type,
                        payload=e.payload,
                    )
                )
    return ids


async def pending(engine: AsyncEngine, aggregate_type: str) -> int:
    async with engine.connect() as conn:
        return int(
            (
                await conn.execute(
                    text("SELECT count(*) FROM outbox WHERE aggregatetype = :a"),
                    {"a": aggregate_type},
                )
            ).scalar_one()
        )


async def wait_drained(engine: AsyncEngine, aggregate_type: str, within: float) -> None:
    """Poll until no row of ``aggregate_type`` is left in the hot outbox table."""

    async def drained() -> bool:
        return await pending(engine, aggregate_type) == 0

    await eventually(drained, within=within, what=f"outbox drained of {aggregate_type}")


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: str
    headers: dict[str, str]
    value: bytes
    timestamp_ms: int = 0  # the record's timestamp (append time on LogAppendTime topics)


async def read_topic(bootstrap: str, topic: str) -> list[Record]:
    """Every record in ``topic`` up to its current end offsets (no consumer group)."""
    parts = [TopicPartition(topic, p) for p in await topic_partitions(bootstrap, topic)]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        consumer.assign(parts)
        ends = await consumer.end_offsets(parts)
        starts = await consumer.beginning_offsets(parts)
        for tp in parts:
            consumer.seek(tp, starts[tp])  # explicit offsets: no reset-policy surprises
        out: list[Record] = []
        remaining = {tp for tp in parts if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batch.items():
                for r in records:
                    if r.offset < ends[tp]:
                        out.append(
                            Record(
                                r.partition,
                                r.offset,
                                (r.key or b"").decode(errors="replace"),
                                # Hostile records may carry any bytes.
                                {k: v.decode(errors="replace") for k, v in r.headers},
                                r.value or b"",
                                r.timestamp,
                            )
                        )
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        return out
    finally:
        await consumer.stop()


async def make_topic(bootstrap: str, aggregate_type: str, partitions: int = 6) -> str:
    topic = f"outbox.event.{aggregate_type}"
    await ensure_topic(bootstrap, topic, partitions=partitions)
    return topic


async def row_states(engine: AsyncEngine, aggregate_type: str) -> dict[uuid.UUID, tuple[str, str]]:
    """(status, last_error or '') of each row of ``aggregate_type`` left in the outbox."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT id, status, last_error FROM outbox WHERE aggregatetype = :a"),
            {"a": aggregate_type},
        )
        return {r.id: (r.status, r.last_error or "") for r in rows}


async def delete_archived(engine: AsyncEngine, aggregate_type: str) -> None:
    """Remove a test's rows from the archive."""
    async with engine.begin() as conn:
        await conn.execute(
            text("DELETE FROM outbox_archive WHERE aggregatetype = :a"), {"a": aggregate_type}
        )
