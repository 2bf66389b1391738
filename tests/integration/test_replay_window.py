"""``relaybus replay`` changing things, on the real stack: 10 000 records produced
with controlled timestamps (one a second, ending ~1 h ago); a middle window copied
exactly, a filtered copy, an interrupted copy resumed (each record once), a group
reset into an inbox consumer (0 new effects) and its undo, ``--reprocess`` (exactly
the window applied again, as new messages), and RabbitMQ's replay from the outbox
archive (the window delivered once)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.brokers.kafka_admin import end_offsets, ensure_topic, group_offsets
from relaybus.brokers.rabbitmq import EXCHANGE
from relaybus.settings import Settings
from tests.support.cli import REPO, run_cli
from tests.support.consumer_apps import TEST_TYPE, make_app
from tests.support.consumerdata import effect_count, event, prepare_effects, running, unique
from tests.support.poll import eventually

RECORDS = 10_000
OTHER = "test.other"
KEYS = 40


@dataclass(frozen=True)
class Source:
    """The produced topic: each record's (partition, offset) -> (n, id, key, type)."""

    topic: str
    base_ms: int
    by_position: dict[tuple[int, int], tuple[int, str, str, str]]

    def at(self, n: int) -> str:
        """The ISO time of record ``n``'s timestamp."""
        return iso(self.base_ms + n * 1000)

    def window(self, first: int, stop: int) -> dict[int, list[str]]:
        """Per partition, the ids of records ``first <= n < stop`` in offset order."""
        out: dict[int, list[str]] = {}
        for (p, _), (n, mid, _, _) in sorted(self.by_position.items()):
            if first <= n < stop:
                out.setdefault(p, []).append(mid)
        return out


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def kind(n: int) -> str:
    return OTHER if n % 5 == 0 else TEST_TYPE


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def source(settings: Settings) -> Source:
    topic = f"t.replaywin.{uuid.uuid4().hex[:8]}"
    await ensure_topic(settings.kafka_bootstrap, topic, 3)
    base = int(time.time() * 1000) - (RECORDS + 3600) * 1000
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5)
    await producer.start()
    pending = []
    try:
        for n in range(RECORDS):
            raw = event(f"k{n % KEYS}", {"n": n}, id=uuid.uuid4(), type=kind(n))
            future = await producer.send(
                topic,
                value=raw.body,
                key=raw.key.encode(),
                headers=[(k, v.encode()) for k, v in raw.headers.items()],
                timestamp_ms=base + n * 1000,
            )
            pending.append((n, raw, future))
        placed = {}
        for n, raw, future in pending:
            meta = await future
            placed[(meta.partition, meta.offset)] = (n, raw.id, raw.key, kind(n))
    finally:
        await producer.stop()
    return Source(topic, base, placed)


async def read_all(
    bootstrap: str, topic: str
) -> dict[int, list[tuple[bytes | None, dict[str, bytes], int]]]:
    """Every record of ``topic`` per partition: (key, headers, timestamp)."""
    ends = await end_offsets(bootstrap, topic)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    out: dict[int, list[tuple[bytes | None, dict[str, bytes], int]]] = {p: [] for p in ends}
    try:
        tps = [TopicPartition(topic, p) for p in ends]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        todo = {tp for tp in tps if ends[tp.partition] > 0}
        while todo:
            for tp, records in (await consumer.getmany(*todo, timeout_ms=1000)).items():
                for r in records:
                    out[tp.partition].append((r.key, dict(r.headers), r.timestamp))
                if records and records[-1].offset >= ends[tp.partition] - 1:
                    todo.discard(tp)
    finally:
        await consumer.stop()
    return out


def ok_json(*args: str) -> dict[str, object]:
    proc = run_cli(*args, "--yes", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


async def test_a_middle_window_is_copied_exactly(settings: Settings, source: Source) -> None:
    dest = f"{source.topic}.copy"
    await ensure_topic(settings.kafka_bootstrap, dest, 3)
    result = ok_json(
        "replay", source.topic, "--since", source.at(3000), "--until", source.at(7000),
        "--to-topic", dest,
    )  # fmt: skip
    assert result["copied"] == 4000
    assert result["read"] == 4000

    copied = await read_all(settings.kafka_bootstrap, dest)
    expected = source.window(3000, 7000)
    for partition, ids in expected.items():  # same partition, same order, same ids
        got = copied[partition]
        assert [h["id"].decode() for _, h, _ in got] == ids
    by_id = {mid: (pos, n, key) for pos, (n, mid, key, _) in source.by_position.items()}
    for records in copied.values():
        for key, headers, timestamp in records:
            (p, offset), n, k = by_id[headers["id"].decode()]
            assert key == k.encode()
            assert timestamp == source.base_ms + n * 1000
            assert headers["x-replay-of"] == f"{source.topic}/{p}/{offset}".encode()
            assert headers["type"] == kind(n).encode()


async def test_a_filtered_copy_keeps_per_key_order(settings: Settings, source: Source) -> None:
    dest = f"{source.topic}.filtered"
    await ensure_topic(settings.kafka_bootstrap, dest, 2)  # fewer partitions: placed by key
    result = ok_json(
        "replay", source.topic, "--since", source.at(0), "--to-topic", dest,
        "--type", OTHER, "--key", "k5",
    )  # fmt: skip
    wanted = sorted(
        n for n, _, key, type_ in source.by_position.values() if key == "k5" and type_ == OTHER
    )
    assert result["copied"] == len(wanted) > 0
    copied = [r for records in (await read_all(settings.kafka_bootstrap, dest)).values()
              for r in records]  # fmt: skip
    positions = [h["x-replay-of"].decode().rsplit("/", 2)[1:] for _, h, _ in copied]
    got = [source.by_position[(int(p), int(o))][0] for p, o in positions]
    assert got == wanted  # every k5/test.other record, once, in key order


async def test_an_interrupted_copy_resumed_has_each_record_once(
    settings: Settings, source: Source
) -> None:
    dest = f"{source.topic}.resumed"
    await ensure_topic(settings.kafka_bootstrap, dest, 3)
    script = os.path.join(os.path.dirname(sys.executable), "relaybus")
    copy = await asyncio.create_subprocess_exec(
        script, "replay", source.topic, "--since", source.at(0), "--to-topic", dest,
        "--rate", "800", "--yes",
        cwd=REPO, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:

        async def some_copied() -> bool:
            return sum((await end_offsets(settings.kafka_bootstrap, dest)).values()) >= 1500

        await eventually(some_copied, within=120, what="the copy started")
    finally:
        copy.send_signal(signal.SIGKILL)  # interrupted: no cleanup of any kind
        await asyncio.wait_for(copy.wait(), 30)
    partial = sum((await end_offsets(settings.kafka_bootstrap, dest)).values())
    assert partial < RECORDS, "the copy finished before it was interrupted"

    result = ok_json("replay", source.topic, "--to-topic", dest, "--resume")
    assert result["resumed"] is True
    assert result["already_there"] == partial  # everything the killed copy wrote, found
    assert result["copied"] == RECORDS - result["already_there"]
    copied = await read_all(settings.kafka_bootstrap, dest)
    ids = [h["id"].decode() for records in copied.values() for _, h, _ in records]
    assert len(ids) == RECORDS
    assert set(ids) == {mid for _, mid, _, _ in source.by_position.values()}
    for partition, expected in source.window(0, RECORDS).items():
        assert [h["id"].decode() for _, h, _ in copied[partition]] == expected


@pytest_asyncio.fixture(loop_scope="session")
async def effects_engine(engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    await prepare_effects(engine)
    yield engine


async def test_a_group_reset_replays_with_no_new_effects_and_undo_restores(
    settings: Settings, source: Source, effects_engine: AsyncEngine
) -> None:
    name = unique("replay")
    app = make_app(
        name, broker="kafka", topic_or_queue=source.topic, group=name, types={TEST_TYPE, OTHER}
    )
    ends = await end_offsets(settings.kafka_bootstrap, source.topic)

    async def caught_up() -> bool:
        return await group_offsets(settings.kafka_bootstrap, name, source.topic) == ends

    async with running(app, settings):
        await eventually(caught_up, within=300, what="the consumer applied the topic")
        # While it runs, a reset is refused, naming the member.
        busy = run_cli("replay", source.topic, "--since", source.at(0), "--group", name, "--yes")
        assert busy.returncode == 1
        assert "live member" in busy.stderr, busy.stderr
        assert "Traceback" not in busy.stderr
    assert await effect_count(effects_engine, name) == (RECORDS, RECORDS)

    reset = ok_json(
        "replay", source.topic, "--since", source.at(3000), "--until", source.at(7000),
        "--group", name,
    )  # fmt: skip
    starts = {int(p): o for p, o in dict(reset["offsets"]).items()}  # type: ignore[call-overload]
    assert await group_offsets(settings.kafka_bootstrap, name, source.topic) == starts
    for partition, ids in source.window(0, 3000).items():
        assert starts[partition] == len(ids)  # the first record at or after n = 3000

    undone = ok_json("replay", "--undo", str(reset["audit_id"]))
    assert await group_offsets(settings.kafka_bootstrap, name, source.topic) == ends
    assert undone["undoes"] == reset["audit_id"]

    ok_json("replay", source.topic, "--since", source.at(3000), "--group", name)
    async with running(app, settings):
        await eventually(caught_up, within=300, what="the consumer read the window again")
    assert await effect_count(effects_engine, name) == (RECORDS, RECORDS)  # 0 new effects

    # --reprocess: the window again as new messages, into the same topic.
    reprocessed = ok_json(
        "replay", source.topic, "--since", source.at(3000), "--until", source.at(7000),
        "--to-topic", source.topic, "--reprocess",
    )  # fmt: skip
    assert reprocessed["copied"] == 4000
    ends = await end_offsets(settings.kafka_bootstrap, source.topic)
    async with running(app, settings):
        await eventually(caught_up, within=300, what="the consumer applied the copies")
    assert await effect_count(effects_engine, name) == (RECORDS + 4000, RECORDS + 4000)
    copies = [
        h for records in (await read_all(settings.kafka_bootstrap, source.topic)).values()
        for _, h, _ in records if "x-replay-of" in h
    ]  # fmt: skip
    originals = {
        f"{source.topic}/{p}/{o}".encode(): mid
        for (p, o), (n, mid, _, _) in source.by_position.items()
        if 3000 <= n < 7000
    }
    assert sorted(h["x-replay-of"] for h in copies) == sorted(originals)
    assert all(h["id"].decode() != originals[h["x-replay-of"]] for h in copies)
    async with effects_engine.connect() as conn:
        audited = (
            await conn.execute(
                text("SELECT action FROM audit_log WHERE id = :id"),
                {"id": reprocessed["audit_id"]},
            )
        ).scalar_one()
    assert audited == "replay.reprocess"


async def test_rabbitmq_replays_the_window_from_the_archive_once(
    settings: Settings, engine: AsyncEngine
) -> None:
    tag = uuid.uuid4().hex[:8]
    now = datetime.now(UTC).replace(tzinfo=None)
    rows: list[dict[str, Any]] = [
        {"id": uuid.uuid4(), "type": f"rt{tag}.made", "key": f"k{i % 3}",
         "ts": now - timedelta(minutes=100 - i), "seq": i}
        for i in range(100)
    ]  # fmt: skip
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO outbox_archive (id, aggregatetype, aggregateid, type, payload, "
                "timestamp, headers, partition, sequence, attempts, outcome) VALUES "
                "(:id, 'rt', :key, :type, CAST(:payload AS jsonb), :ts, '{}', 0, "
                ":seq + 1000000000, 1, 'published')"
            ),
            [{**r, "payload": json.dumps({"n": r["seq"]})} for r in rows],
        )
    connection = await aio_pika.connect(settings.rabbitmq)
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(f"t.archive.{tag}", auto_delete=True)
        await queue.bind(exchange, f"rt{tag}.#")
        window = [r for r in rows if 30 <= r["seq"] < 70]  # minutes 70 .. 31 ago
        env = {"RELAYBUS_ROUTES": json.dumps([{"pattern": "*", "brokers": ["rabbitmq"]}])}
        proc = run_cli(
            "replay", EXCHANGE, "--broker", "rabbitmq",
            "--since", iso_naive(window[0]["ts"]), "--until", iso_naive(rows[70]["ts"]),
            "--type", f"rt{tag}.*", "--yes", "--json", env=env,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["sent"] == len(window)
        got = []
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            got.append((message.message_id, message.headers.get("aggregateid")))
        assert got == [(str(r["id"]), r["key"]) for r in window]  # once each, in order

        too_old = run_cli(
            "replay", EXCHANGE, "--broker", "rabbitmq", "--since", "30d", "--yes", env=env
        )
        assert too_old.returncode == 2
        assert "retention" in too_old.stderr
    finally:
        await connection.close()


def iso_naive(ts: datetime) -> str:
    return ts.isoformat() + "Z"
