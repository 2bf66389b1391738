"""The three relay sources side by side on real PostgreSQL and Kafka: the polling relay,
the WAL relay and Debezium 3.6.1 (Kafka Connect 4.3.1 standalone, started by
``relaybus stack up --debezium``). Same rows, separate topics, same messages as a
relaybus consumer reads them, same effects through the inbox; Kafka Connect killed
with SIGKILL mid-stream loses nothing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.brokers.kafka_admin import ensure_topic
from relaybus.consumers.incoming import WireLimits, decode, read_headers
from relaybus.db import create_engine, session_factory
from relaybus.ids import uuid7
from relaybus.outbox.writer import Outbox
from relaybus.settings import Settings
from relaybus.stack.debezium import KafkaConnect
from relaybus.stack.secure import SecureMaterial
from relaybus.stack.settings import StackSettings
from tests.support.cli import run_cli
from tests.support.consumer_apps import TEST_TYPE, make_app
from tests.support.consumerdata import effect_count, effects, running
from tests.support.outboxdata import Event, Record, enqueue, pending, read_topic
from tests.support.poll import eventually
from tests.support.relayproc import relay_fleet
from tests.support.walslot import scratch_slot, wait_active

KAFKA_ONLY = [{"pattern": "*", "brokers": ["kafka"]}]
PREFIXES = {"poll": "poll.outbox.event.", "wal": "wal.outbox.event."}


@pytest.fixture(scope="module")
def connect() -> Iterator[KafkaConnect]:
    """Kafka Connect with Debezium, started through the CLI if it is not running; if
    this fixture started it, it stops it afterwards and drops its slot, so the rest
    of the suite neither pays for decoding nor retains WAL."""
    connect = KafkaConnect(StackSettings())
    started_here = connect.pid() is None
    if started_here:
        proc = run_cli("stack", "up", "--debezium", "--no-install", timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert connect.task_state() == "RUNNING"
    yield connect
    if started_here:
        connect.stop()
        asyncio.run(_drop_slot(StackSettings().debezium_slot))
        (connect.home / "connect.offsets").unlink(missing_ok=True)


async def _drop_slot(slot: str) -> None:
    engine = create_engine(Settings().database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                    "WHERE slot_name = :s AND NOT active"
                ),
                {"s": slot},
            )
    finally:
        await engine.dispose()


def _agg() -> str:
    return f"c{uuid7().hex[-12:]}"


async def _topics(settings: Settings, agg: str) -> dict[str, str]:
    topics = {
        "poll": f"{PREFIXES['poll']}{agg}",
        "wal": f"{PREFIXES['wal']}{agg}",
        "debezium": f"{StackSettings().debezium_topic_prefix}{agg}",
    }
    for topic in topics.values():  # one partitioning for all three (murmur2 of the key)
        await ensure_topic(settings.kafka_bootstrap, topic, partitions=6)
    return topics


async def _write(engine: AsyncEngine, agg: str, n: int) -> list[uuid.UUID]:
    outbox = Outbox()
    sessions = session_factory(engine)
    ids: list[uuid.UUID] = []
    for start in range(0, n, 100):
        async with sessions() as session, session.begin():
            for i in range(start, min(n, start + 100)):
                headers = (
                    {"traceparent": f"00-{i:032x}-{i:016x}-01", "correlation_id": f"c{i}"}
                    if i % 2
                    else ({"tenant": "<i>acme</i>"} if i % 3 == 0 else None)
                )
                ids.append(
                    await outbox.enqueue(
                        session,
                        aggregate_type=agg,
                        aggregate_id=f"k{i % 50}",
                        type=TEST_TYPE,
                        payload={"n": i, "v": [1, "two", None], "s": "ünï\u2028<x>"},
                        headers=headers,
                    )
                )
    return ids


def _as_consumed(records: list[Record]) -> dict[str, tuple[object, ...]]:
    """Each record as a relaybus consumer reads it: (key, type, payload, headers)."""
    out: dict[str, tuple[object, ...]] = {}
    for r in records:
        headers = read_headers(r.headers.items(), WireLimits())
        m = decode(r.value, headers, key=r.key, source="t")
        out[str(m.id)] = (m.key, m.type, m.payload, m.headers)
    return out


async def test_the_same_2000_events_from_each_source_read_and_apply_the_same(
    settings: Settings,
    engine: AsyncEngine,
    tmp_path: Path,
    connect: KafkaConnect,
    effects_table: None,
) -> None:
    agg = _agg()
    topics = await _topics(settings, agg)
    async with scratch_slot(engine) as slot:
        env = {
            "RELAYBUS_RELAY_SOURCE": "wal",
            "RELAYBUS_RELAY_WAL_SLOT": slot,
            "RELAYBUS_RELAY_WAL_DELETE_PUBLISHED": "false",
            "RELAYBUS_KAFKA_TOPIC_PREFIX": PREFIXES["wal"],
        }
        with relay_fleet(tmp_path, KAFKA_ONLY, **env) as fleet:
            fleet.start("wal")
            await wait_active(engine, slot)
            ids = await _write(engine, agg, 2000)

            async def wal_and_debezium_have_all() -> bool:
                for source in ("wal", "debezium"):
                    if len(await read_topic(settings.kafka_bootstrap, topics[source])) < 2000:
                        return False
                return True

            await eventually(
                wal_and_debezium_have_all, within=120, what="2000 via WAL and Debezium"
            )
    with relay_fleet(tmp_path, KAFKA_ONLY, RELAYBUS_KAFKA_TOPIC_PREFIX=PREFIXES["poll"]) as fleet:
        fleet.start("poll")

        async def drained() -> bool:
            return await pending(engine, agg) == 0

        await eventually(drained, within=120, what="polling relay drained the 2000 rows")

    consumed = {
        source: _as_consumed(await read_topic(settings.kafka_bootstrap, topic))
        for source, topic in topics.items()
    }
    assert set(consumed["poll"]) == {str(i) for i in ids}
    for source in ("wal", "debezium"):
        assert consumed[source] == consumed["poll"], source  # key, type, payload, headers

    # A relaybus consumer with the inbox applies the same effects from each source.
    for source, topic in topics.items():
        app = make_app(f"{agg}-{source}", broker="kafka", topic_or_queue=topic)
        async with running(app, settings):

            async def applied(name: str = f"{agg}-{source}") -> bool:
                return (await effect_count(engine, name))[1] >= 2000

            await eventually(applied, within=120, what=f"effects from {source}")
    applied = {
        source: sorted(
            (str(e["message_id"]), e["key"], e["n"])
            for e in await effects(engine, f"{agg}-{source}")
        )
        for source in topics
    }
    assert applied["wal"] == applied["poll"] == applied["debezium"]
    assert len(applied["poll"]) == 2000


async def test_kafka_connect_killed_mid_stream_loses_nothing_and_the_inbox_dedupes(
    settings: Settings, engine: AsyncEngine, connect: KafkaConnect, effects_table: None
) -> None:
    agg = _agg()
    topic = (await _topics(settings, agg))["debezium"]
    events = [Event(f"k{i % 16}", TEST_TYPE, {"n": i}) for i in range(3000)]
    writing = asyncio.create_task(enqueue(engine, agg, events, chunk=20))

    async def some_arrived() -> bool:
        return len(await read_topic(settings.kafka_bootstrap, topic)) >= 300

    await eventually(some_arrived, within=60, what="first Debezium records")
    pid = connect.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    ids = await writing
    proc = run_cli("stack", "up", "--debezium", "--no-install", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    async def all_arrived() -> bool:
        seen = {r.headers["id"] for r in await read_topic(settings.kafka_bootstrap, topic)}
        return seen >= {str(i) for i in ids}

    await eventually(all_arrived, within=120, what="all 3000 after Kafka Connect's restart")
    records = await read_topic(settings.kafka_bootstrap, topic)
    counts = Counter(r.headers["id"] for r in records)
    assert set(counts) == {str(i) for i in ids}
    duplicates = sum(counts.values()) - len(counts)
    app = make_app(f"{agg}-dbz", broker="kafka", topic_or_queue=topic)
    async with running(app, settings):

        async def applied() -> bool:
            return (await effect_count(engine, f"{agg}-dbz"))[0] >= 3000

        await eventually(applied, within=120, what="effects of the Debezium stream")
    assert await effect_count(engine, f"{agg}-dbz") == (3000, 3000)  # duplicates deduped
    print(f"Kafka Connect SIGKILL: {duplicates} duplicate records delivered, 0 lost")
    await _cleanup(engine, agg)


async def _cleanup(engine: AsyncEngine, agg: str) -> None:
    """Rows only Debezium read: nothing else will drain them."""
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM outbox WHERE aggregatetype = :a"), {"a": agg})


def test_the_connect_rest_api_never_shows_the_database_password(connect: KafkaConnect) -> None:
    """Kafka Connect's REST API answers any local account: the connector's config
    holds a FileConfigProvider reference, the password stays in a 0600 file."""
    url = f"{connect.endpoint}/connectors/relaybus-outbox/config"
    with urllib.request.urlopen(url, timeout=10) as answer:
        config = json.load(answer)
    password = SecureMaterial(StackSettings()).credentials().postgres_password
    assert config["database.password"].startswith("${file:")
    assert password not in json.dumps(config)
