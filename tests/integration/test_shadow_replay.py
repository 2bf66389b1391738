"""``relaybus replay --shadow``: recorded traffic through new handler code, on real
Kafka (a topic window, no group) and RabbitMQ (the outbox archive). The unchanged
handler passes (exit 0); a handler that rejects a field yesterday's events carry, or
that raises on some, is caught (exit 1, each id listed); and neither run changes the
live inbox, effects, outbox, topics, queues, dead letters or consumer groups."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.brokers.kafka_admin import end_offsets, ensure_topic, group_offsets
from relaybus.brokers.kafka_connection import kafka_client_options
from relaybus.brokers.rabbitmq import EXCHANGE
from relaybus.consumers.naming import dlq_name, retry_name
from relaybus.db import session_factory
from relaybus.outbox.writer import Outbox
from relaybus.settings import Settings
from tests.support import shadow_apps
from tests.support.cli import run_cli
from tests.support.consumerdata import effect_count, event, kafka_send, prepare_effects, running
from tests.support.consumerdata import unique as unique_name
from tests.support.outboxdata import read_topic
from tests.support.poll import eventually
from tests.support.relayproc import relay_fleet

COUNT = 30


async def _db_state(engine: AsyncEngine, name: str) -> dict[str, int]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM inbox WHERE consumer = :c), "
                    "(SELECT count(*) FROM consumer_effects WHERE consumer = :c), "
                    "(SELECT count(*) FROM outbox WHERE aggregatetype = :out) + "
                    "(SELECT count(*) FROM outbox_archive WHERE aggregatetype = :out)"
                ),
                {"c": name, "out": f"{name}-out"},
            )
        ).one()
    return {"inbox": row[0], "effects": row[1], "sends": row[2]}


async def _kafka_state(settings: Settings, name: str, topic: str) -> dict[str, Any]:
    topics = [topic, dlq_name(topic), retry_name(topic, 1), retry_name(topic, 2)]
    admin = AIOKafkaAdminClient(**kafka_client_options(settings.kafka))
    await admin.start()
    try:
        groups = sorted(g[0] for g in await admin.list_consumer_groups() if name in g[0])
    finally:
        await admin.close()
    return {
        "ends": {t: await end_offsets(settings.kafka, t) for t in topics},
        "committed": await group_offsets(settings.kafka, name, topic),
        "groups": groups,
    }


def _shadow(topic: str, app: str, env: dict[str, str], *extra: str) -> tuple[int, dict[str, Any]]:
    proc = run_cli(
        "replay", topic, "--since", "1h", "--shadow", f"tests.support.shadow_apps:{app}",
        "--json", *extra, env=env,
    )  # fmt: skip
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def _count(report: dict[str, Any], outcome: str) -> int:
    return sum(r["count"] for r in report["outcomes"] if r["outcome"] == outcome)


async def test_kafka_shadow_passes_the_same_code_and_catches_a_regression(
    settings: Settings, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    await prepare_effects(engine)
    name = unique_name("shadowk").replace("-", "")
    topic = f"t.{name}"
    env = {
        "RELAYBUS_TEST_NAME": name,
        "RELAYBUS_TEST_BROKER": "kafka",
        "RELAYBUS_TEST_SOURCE": topic,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    await ensure_topic(settings.kafka, topic, partitions=3)
    records = [event(f"{name}-k{i % 5}", {"n": i, "colour": "red"}) for i in range(COUNT)]
    poison = [event(f"{name}-k0", {"n": 1000 + i, "schema_error": True}) for i in range(2)]
    async with running(shadow_apps.live(), settings):
        await kafka_send(settings.kafka_bootstrap, topic, records + poison)

        async def settled() -> bool:
            applied = (await effect_count(engine, name))[1] == COUNT
            dead = len(await read_topic(settings.kafka_bootstrap, dlq_name(topic))) == 2
            return applied and dead

        await eventually(settled, within=60, what="the live consumer applied and dead-lettered")
    before = (await _db_state(engine, name), await _kafka_state(settings, name, topic))

    code, report = _shadow(topic, "same", env)
    assert code == 0, report
    assert (_count(report, "applied"), _count(report, "dead-lettered")) == (COUNT, 2)
    assert report["live"] == {"applied": COUNT, "dead_lettered": 2}
    assert report["regressions"] == []
    assert report["captured_sends"] == [{"handler": name, "type": "test.shipped", "count": COUNT}]

    code, report = _shadow(topic, "strict", env)
    assert code == 1
    assert sorted(r["id"] for r in report["regressions"]) == sorted(r.id for r in records)
    assert {r["reason"] for r in report["regressions"]} == {"schema"}

    code, report = _shadow(topic, "flaky", env)
    assert code == 1
    failing = {r.id for r in records if json.loads(r.body)["n"] % 10 == 0}
    assert {r["id"] for r in report["regressions"]} == failing
    assert all(r["shadow"] == "failed" for r in report["regressions"])
    assert any("cannot ship parcel" in e["excerpt"] for e in report["exceptions"])

    after = (await _db_state(engine, name), await _kafka_state(settings, name, topic))
    assert after == before  # nothing a shadow run did is visible to the live system
    await _forget_sends(engine, name)


async def test_archive_shadow_for_rabbitmq_catches_a_regression_and_touches_nothing(
    settings: Settings, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    await prepare_effects(engine)
    name = unique_name("shadowr").replace("-", "")
    queue, type_ = f"q.{name}", f"{name}.made"
    env = {
        "RELAYBUS_TEST_NAME": name,
        "RELAYBUS_TEST_BROKER": "rabbitmq",
        "RELAYBUS_TEST_SOURCE": queue,
        "RELAYBUS_TEST_BINDING": f"{name}.#",
        "RELAYBUS_TEST_TYPE": type_,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    try:
        async with running(shadow_apps.live(), settings):
            with relay_fleet(
                tmp_path, [{"pattern": f"{name}.*", "brokers": ["rabbitmq"]}]
            ) as fleet:
                fleet.start(f"shadow-{name}")
                outbox = Outbox()
                async with session_factory(engine)() as session, session.begin():
                    for i in range(COUNT):
                        await outbox.enqueue(
                            session,
                            aggregate_type=name,
                            aggregate_id=f"{name}-k{i % 5}",
                            type=type_,
                            payload={"n": i, "colour": "red"},
                        )

                async def applied() -> bool:
                    return (await effect_count(engine, name))[1] == COUNT

                await eventually(applied, within=60, what="the live consumer applied")

                async def archived() -> bool:
                    async with engine.connect() as conn:
                        n = (
                            await conn.execute(
                                text("SELECT count(*) FROM outbox_archive WHERE type = :t"),
                                {"t": type_},
                            )
                        ).scalar_one()
                    return int(n) == COUNT

                await eventually(archived, within=60, what="the published rows archived")
        before = (await _db_state(engine, name), await _queue_depths(settings, queue))

        code, report = _shadow(EXCHANGE, "same", env, "--broker", "rabbitmq")
        assert code == 0, report
        assert _count(report, "applied") == COUNT
        assert report["live"]["applied"] == COUNT

        code, report = _shadow(EXCHANGE, "strict", env, "--broker", "rabbitmq")
        assert code == 1
        assert len(report["regressions"]) == COUNT

        after = (await _db_state(engine, name), await _queue_depths(settings, queue))
        assert after == before
    finally:
        await _forget_sends(engine, name)
        await _delete_queues(settings, queue)


async def _forget_sends(engine: AsyncEngine, name: str) -> None:
    """The live handler's outbound events (no relay of this test routes them)."""
    async with engine.begin() as conn:
        await conn.execute(
            text("DELETE FROM outbox WHERE aggregatetype = :out"), {"out": f"{name}-out"}
        )


async def _queue_depths(settings: Settings, queue: str) -> dict[str, int]:
    connection = await aio_pika.connect(settings.rabbitmq)
    try:
        channel = await connection.channel()
        depths = {}
        for name in (queue, dlq_name(queue)):
            declared = await channel.declare_queue(name, passive=True)
            depths[name] = declared.declaration_result.message_count or 0
        return depths
    finally:
        await connection.close()


async def _delete_queues(settings: Settings, queue: str) -> None:
    connection = await aio_pika.connect(settings.rabbitmq)
    try:
        channel = await connection.channel()
        for name in (queue, dlq_name(queue), retry_name(queue, 1), retry_name(queue, 2)):
            await channel.queue_delete(name)
        await channel.queue_delete(f"{queue}.retry.due")
    finally:
        await connection.close()
