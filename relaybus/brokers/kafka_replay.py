"""Kafka replay mechanics: resetting a consumer group to offsets, and copying a
window of a topic into another topic, resumably.

Both are operator actions (``relaybus replay``); the CLI records them in the audit
log. Nothing here reads a header to decide where a record goes: the destination is
the operator's, and the only header read back (``x-replay-of``, on resume) is
bounded and matched against the window being copied.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from relaybus.brokers.kafka import key_partition
from relaybus.brokers.kafka_admin import (
    PartitionWindow,
    committed_reader,
    end_offsets,
    group_offsets,
    list_topics,
    reaching,
    read_to,
    start_group_at,
)
from relaybus.brokers.kafka_connection import KafkaTarget, kafka_client_options
from relaybus.brokers.kafka_window import read_window
from relaybus.headers import REPLAY_OF
from relaybus.tracing import tracer
from relaybus.tracing.redrive import redriven_pairs

# Batches read per partition and records in flight before the copy waits for acks:
# what bounds the copy's memory, whatever the window's size.
FETCH_RECORDS = 500
MAX_UNACKED = 2_000
# A value of x-replay-of longer than this is not ours: "<topic>/<partition>/<offset>".
_MAX_REPLAY_OF = 300


class GroupBusyError(Exception):
    """The group has live members: resetting its offsets under them would be lost
    (their next commit overwrites it) or race their processing."""

    def __init__(self, group: str, members: list[str]) -> None:
        super().__init__(
            f"consumer group {group!r} has {len(members)} live member(s): "
            f"{', '.join(members)}; stop them first"
        )
        self.members = members


async def group_members(bootstrap: KafkaTarget, group: str) -> list[str]:
    """The live members of ``group``, each as ``client-id@host (member-id)``; empty
    for a group without members (state Empty or Dead)."""
    admin = AIOKafkaAdminClient(**kafka_client_options(bootstrap))
    await admin.start()
    try:
        responses = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    members: list[str] = []
    for response in responses:
        for described in response.groups:
            if described[1] != group:
                continue
            for member in described[5]:
                member_id, client_id, host = member[0], member[1], member[2]
                members.append(f"{client_id}@{host.lstrip('/')} ({member_id})")
    return members


async def reset_group(
    bootstrap: KafkaTarget, group: str, topic: str, offsets: Mapping[int, int]
) -> dict[int, int]:
    """Commit ``offsets`` (partition -> next offset to read) for ``group`` on
    ``topic`` and return the offsets it had before (partitions it never committed on
    are left out). Raises ``GroupBusyError`` while the group has live members and
    ``ConnectionError`` when Kafka cannot be asked. Only the given partitions change."""
    with reaching(bootstrap):
        members = await group_members(bootstrap, group)
        if members:
            raise GroupBusyError(group, members)
        previous = await group_offsets(bootstrap, group, topic)
        await start_group_at(bootstrap, group, topic, offsets)
    return previous


def replay_of(topic: str, partition: int, offset: int) -> bytes:
    """The ``x-replay-of`` value of a copy of ``topic``'s record at ``partition``/``offset``."""
    return f"{topic}/{partition}/{offset}".encode()


def parse_replay_of(value: bytes, topic: str) -> tuple[int, int] | None:
    """(partition, offset) from an ``x-replay-of`` value naming ``topic``; None for
    anything else (another topic, malformed, oversized)."""
    if len(value) > _MAX_REPLAY_OF:
        return None
    try:
        text = value.decode()
    except UnicodeDecodeError:
        return None
    source, sep, rest = text.rpartition("/")
    name, sep2, partition = source.rpartition("/")
    if not sep or not sep2 or name != topic:
        return None
    if not (partition.isdigit() and rest.isdigit()):
        return None
    return int(partition), int(rest)


@dataclass
class CopiedSet:
    """Which offsets of each window a destination already holds: one bit per
    offset of the window, so a resume's memory is bounded by the window's size / 8."""

    windows: dict[int, PartitionWindow]
    bits: dict[int, bytearray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for p, w in self.windows.items():
            self.bits[p] = bytearray((w.count + 7) // 8)

    def add(self, partition: int, offset: int) -> bool:
        window = self.windows.get(partition)
        if window is None or not window.start <= offset < window.end:
            return False
        i = offset - window.start
        self.bits[partition][i >> 3] |= 1 << (i & 7)
        return True

    def __contains__(self, where: tuple[int, int]) -> bool:
        partition, offset = where
        window = self.windows.get(partition)
        if window is None or not window.start <= offset < window.end:
            return False
        i = offset - window.start
        return bool(self.bits[partition][i >> 3] & (1 << (i & 7)))

    def count(self) -> int:
        return sum(bin(b).count("1") for bits in self.bits.values() for b in bits)


@dataclass(frozen=True)
class CopyFilter:
    """Which records of the window are copied: all, or those of an event ``type``
    (the ``type`` header) and/or with a record ``key``."""

    type: str | None = None
    key: str | None = None

    def wants(self, key: bytes | None, headers: Mapping[str, bytes]) -> bool:
        if self.key is not None and key != self.key.encode():
            return False
        return self.type is None or headers.get("type") == self.type.encode()


@dataclass(frozen=True)
class CopyResult:
    """What a copy did: records read from the window, copied, left out by the
    filter, and skipped because the destination already had them (resume)."""

    read: int
    copied: int
    filtered: int
    already_there: int


async def destination_ends(bootstrap: KafkaTarget, topic: str) -> dict[int, int]:
    """End offsets of ``topic`` (which must exist; ``LookupError`` if not): where a
    copy into it starts."""
    with reaching(bootstrap):
        if topic not in await list_topics(bootstrap):
            raise LookupError(f"kafka topic {topic!r} does not exist (create it first)")
        return await end_offsets(bootstrap, topic)


async def already_copied(
    bootstrap: KafkaTarget,
    source: str,
    destination: str,
    since: Mapping[int, int],
    windows: list[PartitionWindow],
) -> CopiedSet:
    """The records of ``windows`` (of ``source``) that ``destination`` holds at or
    after offsets ``since`` (where the interrupted copy started writing), found by
    their ``x-replay-of`` header."""
    copied = CopiedSet({w.partition: w for w in windows})
    with reaching(bootstrap):
        await _mark_copied(bootstrap, source, destination, since, copied)
    return copied


async def _mark_copied(
    bootstrap: KafkaTarget,
    source: str,
    destination: str,
    since: Mapping[int, int],
    copied: CopiedSet,
) -> None:
    consumer = committed_reader(bootstrap, max_poll_records=FETCH_RECORDS)
    await consumer.start()
    try:
        tps = [TopicPartition(destination, p) for p in since]
        ends = await consumer.end_offsets(tps)
        todo = {tp for tp in tps if since[tp.partition] < ends[tp]}
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, since[tp.partition])
        while todo:
            batches = await consumer.getmany(*todo, timeout_ms=1000)
            for records in batches.values():
                for r in records:
                    for name, value in r.headers:
                        if name == REPLAY_OF:
                            found = parse_replay_of(value, source)
                            if found is not None:
                                copied.add(*found)
            await read_to(consumer, todo, ends)
    finally:
        await consumer.stop()


Rewrite = Callable[[int, int, list[tuple[str, bytes]]], list[tuple[str, bytes]]]


async def copy_window(
    bootstrap: KafkaTarget,
    source: str,
    windows: list[PartitionWindow],
    destination: str,
    *,
    keep_partitions: bool,
    select: CopyFilter,
    skip: CopiedSet,
    rewrite: Rewrite | None = None,
    keep_timestamps: bool = True,
    rate: float | None = None,
    progress: Callable[[int], None] = lambda n: None,
) -> CopyResult:
    """Copy the records of ``windows`` from ``source`` into ``destination``: keys,
    values and headers as they are, plus ``x-replay-of: source/partition/offset``
    (replacing any it had). Per source partition, records are written in offset
    order: to the same partition number when ``keep_partitions``, else to the
    partition the key hashes to (per-key order kept). ``rewrite(partition, offset,
    headers)`` may change the headers (``--reprocess`` gives new ids). Records in
    ``skip`` are not written again (resume). ``rate`` caps records per second.

    At-least-once until it returns: an interrupted copy has written a prefix of each
    source partition's records (idempotent producer: no gaps, no reordering), and a
    resume finds them by their ``x-replay-of``. ``progress`` is called with the
    number of window records dealt with since the last call."""
    if not any(w.count for w in windows):
        return CopyResult(0, 0, 0, 0)
    with reaching(bootstrap):
        producer = AIOKafkaProducer(
            **kafka_client_options(bootstrap), acks="all", enable_idempotence=True, linger_ms=5
        )
        await producer.start()
        read = copied = filtered = present = 0
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            out_parts = sorted(await producer.partitions_for(destination))
            unacked: list[asyncio.Future[object]] = []
            async for batch in read_window(bootstrap, source, windows):
                for r in batch:
                    read += 1
                    headers = [(n, v) for n, v in r.headers if n != REPLAY_OF]
                    if (r.partition, r.offset) in skip:
                        present += 1
                        continue
                    if not select.wants(r.key, dict(headers)):
                        filtered += 1
                        continue
                    headers.append((REPLAY_OF, replay_of(source, r.partition, r.offset)))
                    if rewrite is not None:
                        headers = rewrite(r.partition, r.offset, headers)
                    if keep_partitions:
                        partition: int | None = r.partition
                    elif r.key is not None:
                        partition = out_parts[key_partition(r.key, len(out_parts))]
                    else:
                        partition = None
                    unacked.append(
                        await producer.send(
                            destination,
                            value=r.value,
                            key=r.key,
                            headers=headers,
                            partition=partition,
                            timestamp_ms=r.timestamp if keep_timestamps else None,
                        )
                    )
                    copied += 1
                    if rate is not None:
                        # Paced, not bursty: wait until this record's slot comes.
                        ahead = began + copied / rate - loop.time()
                        if ahead > 0:
                            await asyncio.sleep(ahead)
                if len(unacked) >= MAX_UNACKED:
                    await asyncio.gather(*unacked)
                    unacked.clear()
                progress(len(batch))
            await asyncio.gather(*unacked)
        finally:
            await producer.stop()
        return CopyResult(read, copied, filtered, present)


def traced_copies(
    rewrite: Rewrite | None, *, action: str, destination: str, audit_id: int | None
) -> Rewrite | None:
    """``rewrite`` followed, when tracing is on, by a replay span per copy linked to
    the original's trace (``relaybus.tracing.redrive``); ``rewrite`` itself when off."""
    if not tracer().enabled:
        return rewrite

    def traced(
        partition: int, offset: int, headers: list[tuple[str, bytes]]
    ) -> list[tuple[str, bytes]]:
        if rewrite is not None:
            headers = rewrite(partition, offset, headers)
        return redriven_pairs(headers, action=action, destination=destination, audit_id=audit_id)

    return traced


def reprocess_ids(salt: str) -> Rewrite:
    """A rewrite that gives each copy a new message id, derived from ``salt`` (the
    audit id) and the original's position: a resumed or repeated send of the same
    copy has the same new id, so the inbox still applies it once."""
    namespace = uuid.uuid5(uuid.NAMESPACE_URL, f"relaybus-replay:{salt}")

    def rewrite(
        partition: int, offset: int, headers: list[tuple[str, bytes]]
    ) -> list[tuple[str, bytes]]:
        new_id = str(uuid.uuid5(namespace, f"{partition}/{offset}")).encode()
        return [(n, v) for n, v in headers if n != "id"] + [("id", new_id)]

    return rewrite
