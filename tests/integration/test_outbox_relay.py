"""The outbox and relay against real PostgreSQL and Kafka / RabbitMQ."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
from collections import Counter, defaultdict
from pathlib import Path
from urllib.request import urlopen

import aio_pika
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.brokers.rabbitmq import EXCHANGE
from relaybus.db import session_factory
from relaybus.ids import uuid7
from relaybus.outbox.writer import Outbox, OutboxError, partition_for
from relaybus.settings import Settings
from tests.support.cli import run_cli
from tests.support.outboxdata import (
    Event,
    Record,
    enqueue,
    make_topic,
    pending,
    read_topic,
    row_states,
    wait_drained,
)
from tests.support.poll import eventually
from tests.support.relayproc import relay_fleet

KAFKA_ONLY = [{"pattern": "*", "brokers": ["kafka"]}]
TRACEPARENT = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"


def _agg() -> str:
    return f"t{uuid7().hex[-12:]}"


def _n_by_key(records: list[Record]) -> dict[str, list[int]]:
    """Payload ``n`` values of each key, in log order (a key lives in one partition)."""
    by_key: dict[str, list[int]] = defaultdict(list)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        by_key[r.key].append(json.loads(r.value)["n"])
    return by_key


def _kcat(bootstrap: str, topic: str) -> list[dict[str, object]]:
    """Read the whole topic with kcat (librdkafka): not the relay's client."""
    out = subprocess.run(
        ["kcat", "-b", bootstrap, "-C", "-t", topic, "-o", "beginning", "-e", "-J", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


async def test_commit_publishes_once_with_key_headers_payload_and_rollback_nothing(
    settings: Settings, engine: AsyncEngine, tmp_path: Path
) -> None:
    agg = _agg()
    topic = await make_topic(settings.kafka_bootstrap, agg)
    outbox = Outbox()
    sessions = session_factory(engine)

    class Boom(Exception):
        pass

    async def write_then_fail() -> None:
        async with sessions() as session, session.begin():
            await outbox.enqueue(
                session,
                aggregate_type=agg,
                aggregate_id="k-1",
                type="order.rolledback",
                payload={"never": True},
            )
            raise Boom

    with pytest.raises(Boom):
        await write_then_fail()
    async with sessions() as session, session.begin():
        committed = await outbox.enqueue(
            session,
            aggregate_type=agg,
            aggregate_id="k-1",
            type="order.created",
            payload={"total": 42, "items": ["a", "b"]},
            headers={"correlation_id": "corr-1", "traceparent": TRACEPARENT},
        )
    assert await pending(engine, agg) == 1  # the rolled-back event never reached the table

    with relay_fleet(tmp_path, KAFKA_ONLY) as fleet:
        fleet.start("r1")
        await wait_drained(engine, agg, within=60)

    records = _kcat(settings.kafka_bootstrap, topic)
    assert len(records) == 1
    rec = records[0]
    assert rec["key"] == "k-1"
    assert json.loads(str(rec["payload"])) == {"total": 42, "items": ["a", "b"]}
    raw = rec["headers"]
    assert isinstance(raw, list)
    headers = dict(zip(raw[::2], raw[1::2], strict=True))
    assert headers["id"] == str(committed)
    assert headers["type"] == "order.created"
    assert headers["aggregatetype"] == agg
    assert headers["aggregateid"] == "k-1"
    assert headers["content-type"] == "application/json"
    assert headers["schema_version"] == "1"
    assert headers["correlation_id"] == "corr-1"
    assert headers["traceparent"].startswith("00-aaaa")
    assert headers["occurred_at"].endswith("Z")


async def test_invalid_payloads_are_refused_before_anything_is_written(
    engine: AsyncEngine,
) -> None:
    agg = _agg()
    outbox = Outbox(max_payload_bytes=1000)
    sessions = session_factory(engine)
    async with sessions() as session, session.begin():
        with pytest.raises(OutboxError, match="over the 1000-byte cap"):
            await outbox.enqueue(
                session,
                aggregate_type=agg,
                aggregate_id="k",
                type="t.x",
                payload={"blob": "x" * 2000},
            )
        with pytest.raises(OutboxError, match="not JSON-serialisable"):
            await outbox.enqueue(
                session,
                aggregate_type=agg,
                aggregate_id="k",
                type="t.x",
                payload={"when": object()},
            )
        with pytest.raises(OutboxError, match="aggregate_id"):
            await outbox.enqueue(
                session, aggregate_type=agg, aggregate_id="", type="t.x", payload={}
            )
    assert await pending(engine, agg) == 0


@pytest.mark.alongside  # its own aggregate and topic; make test runs it with kafka3+bench
async def test_three_relays_publish_20k_events_in_key_order_exactly_once(
    settings: Settings, engine: AsyncEngine, tmp_path: Path
) -> None:
    agg = _agg()
    topic = await make_topic(settings.kafka_bootstrap, agg, partitions=8)
    keys = [f"key-{i}" for i in range(50)]
    events = [Event(keys[i % 50], "load.tick", {"n": i // 50}) for i in range(20_000)]
    with relay_fleet(tmp_path, KAFKA_ONLY, RELAYBUS_OUTBOX_PARTITIONS="16") as fleet:
        for name in ("r1", "r2", "r3"):
            fleet.start(name)
        ids = await enqueue(engine, agg, events, chunk=500)
        await wait_drained(engine, agg, within=240)
        logs = fleet.logs()

    records = await read_topic(settings.kafka_bootstrap, topic)
    per_id = Counter(r.headers["id"] for r in records)
    assert set(per_id) == {str(i) for i in ids}, "every event published"
    assert max(per_id.values()) == 1, "no event published twice by live relays"
    assert all(ns == list(range(400)) for ns in _n_by_key(records).values()), "per-key order"
    # All three relays took part (they split the 16 partitions between them).
    assert all(f"relay {n} started" in logs for n in ("r1", "r2", "r3"))


@pytest.mark.alongside  # its own aggregate and topic; make test runs it with kafka3+bench
async def test_relay_killed_mid_batch_and_restarted_loses_nothing(
    settings: Settings, engine: AsyncEngine, tmp_path: Path
) -> None:
    agg = _agg()
    topic = await make_topic(settings.kafka_bootstrap, agg)
    events = [Event(f"k{i % 20}", "crash.tick", {"n": i // 20}) for i in range(20_000)]
    ids = await enqueue(engine, agg, events, chunk=500)
    with relay_fleet(tmp_path, KAFKA_ONLY, RELAYBUS_RELAY_BATCH_SIZE="200") as fleet:
        victim = fleet.start("victim")

        async def some_published() -> bool:
            return await pending(engine, agg) < 19_000

        await eventually(some_published, within=60, what="relay started publishing")
        victim.signal(signal.SIGKILL)
        left = await pending(engine, agg)
        assert left > 0, "killed before it finished"
        fleet.start("successor")
        await wait_drained(engine, agg, within=180)

    records = await read_topic(settings.kafka_bootstrap, topic)
    per_id = Counter(r.headers["id"] for r in records)
    assert set(per_id) == {str(i) for i in ids}, "no event lost"
    duplicates = sum(per_id.values()) - len(per_id)
    print(f"\nSIGKILL mid-batch: {left} rows were pending, {duplicates} duplicate(s) republished")
    for ns in _n_by_key(records).values():
        # Duplicates may repeat a suffix, but first occurrences are in order.
        firsts = list(dict.fromkeys(ns))
        assert firsts == sorted(firsts)


async def _same_partition_key(key: str, partitions: int, prefix: str) -> str:
    target = partition_for(key, partitions)
    candidates = (f"{prefix}-{i}" for i in range(10_000))
    return next(c for c in candidates if partition_for(c, partitions) == target)


async def test_unpublishable_rows_fail_block_their_key_and_operators_retry_or_skip(
    settings: Settings, engine: AsyncEngine, tmp_path: Path
) -> None:
    agg = _agg()
    topic = await make_topic(settings.kafka_bootstrap, agg)
    routes = [
        {"pattern": f"{agg}.unroutable", "brokers": ["rabbitmq"]},
        {"pattern": "*", "brokers": ["kafka"]},
    ]
    a, c = f"{agg}-A", f"{agg}-C"
    sentinel = await _same_partition_key(a, 16, f"{agg}-D")
    ids = await enqueue(
        engine,
        agg,
        [
            Event(a, "ok", {"n": 0}),
            Event(a, "ok", {"n": 1, "blob": "x" * 30_000}),  # over the relay's 20 kB limit
            Event(a, "ok", {"n": 2}),
            Event(a, "ok", {"n": 3}),
            *[Event(f"{agg}-B", "ok", {"n": i}) for i in range(10)],
            Event(c, f"{agg}.unroutable", {"n": 0}),  # no queue bound: returned by RabbitMQ
            Event(c, f"{agg}.unroutable", {"n": 1}),  # deferred behind n=0, not sent
            Event(sentinel, "ok", {"n": 0}),
        ],
    )
    oversize, unroutable = ids[1], ids[14]
    env = {"RELAYBUS_KAFKA_MAX_REQUEST_SIZE": "20000"}
    connection = await aio_pika.connect_robust(settings.rabbitmq)
    try:
        with relay_fleet(tmp_path, routes, **env) as fleet:
            fleet.start("r1")

            async def settled() -> bool:
                # Everything movable has moved: only A1-A3 and C0-C1 remain.
                return await pending(engine, agg) == 5

            await eventually(settled, within=60, what="other keys published")
            proc = run_cli("outbox", "ls", "--status", "failed", "--json", "--limit", "1000")
            assert proc.returncode == 0, proc.stderr
            failed = {r["id"]: r for r in json.loads(proc.stdout)}
            assert str(oversize) in failed
            assert str(unroutable) in failed
            assert "max_request_size" in failed[str(oversize)]["last_error"]
            assert "unroutable" in failed[str(unroutable)]["last_error"]
            # A2, A3 wait behind A1 although the relay already published the sentinel
            # that comes after them in the same partition.
            async with engine.connect() as conn:
                waiting = (
                    (
                        await conn.execute(
                            text(
                                "SELECT id FROM outbox "
                                "WHERE status = 'pending' AND aggregateid = :k"
                            ),
                            {"k": a},
                        )
                    )
                    .scalars()
                    .all()
                )
            assert set(waiting) == {ids[2], ids[3]}

            # Operator: skip the oversized row -> A's tail flows.
            proc = run_cli("outbox", "skip", str(oversize), "--yes")
            assert proc.returncode == 0, proc.stderr

            # Operator: bind a queue, then retry the unroutable row -> C's events flow, in order.
            channel = await connection.channel()
            exchange = await channel.declare_exchange(
                EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
            )
            queue = await channel.declare_queue(exclusive=True)
            await queue.bind(exchange, routing_key=f"{agg}.unroutable")
            proc = run_cli("outbox", "retry", str(unroutable), "--yes")
            assert proc.returncode == 0, proc.stderr
            await wait_drained(engine, agg, within=60)

            got = []
            async with queue.iterator() as it:
                async for msg in it:
                    await msg.ack()
                    got.append(json.loads(msg.body)["n"])
                    if len(got) == 2:
                        break
            assert got == [0, 1]
    finally:
        await connection.close()

    records = await read_topic(settings.kafka_bootstrap, topic)
    a_order = [json.loads(r.value)["n"] for r in records if r.key == a]
    assert a_order == [0, 2, 3]
    async with engine.connect() as conn:
        actions = (
            (
                await conn.execute(
                    text("SELECT action FROM audit_log WHERE target IN (:a, :b)"),
                    {"a": str(oversize), "b": str(unroutable)},
                )
            )
            .scalars()
            .all()
        )
    assert sorted(actions) == ["outbox.retry", "outbox.skip"]


async def test_sigterm_hands_partitions_back_and_metrics_are_served(
    settings: Settings, engine: AsyncEngine, tmp_path: Path
) -> None:
    agg = _agg()
    await make_topic(settings.kafka_bootstrap, agg)
    port = _free_port()
    with relay_fleet(tmp_path, KAFKA_ONLY, RELAYBUS_RELAY_METRICS_PORT=str(port)) as fleet:
        relay = fleet.start("metered")
        await enqueue(engine, agg, [Event("m-1", "metrics.tick", {"n": i}) for i in range(20)])
        await wait_drained(engine, agg, within=60)

        async def scraped() -> bool:
            try:
                body = await asyncio.to_thread(_scrape, port)
            except OSError:
                return False
            return 'relaybus_relay_published_total{broker="kafka"}' in body and (
                "relaybus_relay_partitions_held 16.0" in body
            )

        await eventually(scraped, within=30, what="metrics served")
        body = await asyncio.to_thread(_scrape, port)
        for name in (
            "relaybus_outbox_backlog",
            "relaybus_outbox_oldest_pending_age_seconds",
            "relaybus_relay_failures_total",
            "relaybus_outbox_failed",
        ):
            assert name in body
        relay.signal(signal.SIGTERM)
        assert relay.proc is not None
        assert relay.proc.returncode == 0
        assert "relay metered stopped" in relay.log.read_text()
    # Leases were released, not left to expire: the partitions are free right away.
    async with engine.connect() as conn:
        held = (
            await conn.execute(
                text(
                    "SELECT count(*) FROM distributed_locks WHERE name LIKE 'outbox-partition-%' "
                    "AND expires_at > clock_timestamp()"
                )
            )
        ).scalar_one()
    assert held == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> str:
    with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        return str(response.read().decode())


async def test_rows_written_around_the_outbox_are_failed_and_the_partition_moves_on(
    settings: Settings, engine: AsyncEngine, tmp_path: Path
) -> None:
    """Rows inserted by another client (here plain SQL, as psql would) that the relay
    cannot encode are marked failed with the reason; their key waits, others flow."""
    agg = _agg()
    topic = await make_topic(settings.kafka_bootstrap, agg)
    bad_key, good_key = f"{agg}-bad", f"{agg}-good"
    rows = [
        (bad_key, '{"retries": 3}', "strings"),  # a header value that is not text
        (f"{agg}-reserved", '{"x-attempts": "9"}', "reserved"),
        (bad_key, "{}", None),  # behind the failed row of its key: waits
        (good_key, "{}", None),
    ]
    ids = []
    async with engine.begin() as conn:
        for key, headers, _ in rows:
            ids.append(uuid7())
            await conn.execute(
                text(
                    "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload, "
                    "headers, partition) VALUES (:id, :agg, :key, 'ok', '{\"n\": 1}', "
                    "CAST(:headers AS jsonb), :p)"
                ),
                {
                    "id": ids[-1],
                    "agg": agg,
                    "key": key,
                    "headers": headers,
                    "p": partition_for(key, settings.outbox_partitions),
                },
            )
    with relay_fleet(tmp_path, KAFKA_ONLY) as fleet:
        fleet.start("r1")

        async def settled() -> bool:
            return (
                await pending(engine, agg) == 3
                and len(await read_topic(settings.kafka_bootstrap, topic)) == 1
            )

        await eventually(settled, within=60, what="good row published, bad rows failed")
    state = await row_states(engine, agg)
    for message_id, (_, _, reason) in zip(ids, rows, strict=True):
        if reason is not None:
            assert state[message_id][0] == "failed"
            assert reason in state[message_id][1]
    assert state[ids[2]] == ("pending", "")
    assert ids[3] not in state  # published and archived
