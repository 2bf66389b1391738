"""Consumers under crashes, rebalances and fan-out, on the real brokers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.consumers.policy import RetryPolicy
from relaybus.settings import Settings
from tests.support.cli import run_cli
from tests.support.consumer_apps import make_app
from tests.support.consumerdata import (
    effect_count,
    effects,
    event,
    running,
    send,
    unique,
)
from tests.support.poll import eventually
from tests.support.relayproc import RelaybusProcess

BROKERS = ["kafka", "rabbitmq"]


# ``alongside``: make test runs it in the kafka3+bench run (tests/phases.py).
pytestmark = [pytest.mark.usefixtures("effects_table"), pytest.mark.alongside]


def _names(broker: str, prefix: str) -> tuple[str, str, str]:
    """(consumer name, source topic/queue, where to send: topic or routing key)."""
    name = unique(prefix)
    if broker == "kafka":
        return name, f"t.{name}", f"t.{name}"
    return name, f"q.{name}", f"rk.{name}"


@pytest.mark.parametrize("broker", BROKERS)
async def test_worker_sigkilled_three_times_in_3k_run_applies_each_once(
    broker: str, settings: Settings, engine: AsyncEngine, tmp_path: Path
) -> None:
    name, source, route = _names(broker, "kill")
    env = {
        "RELAYBUS_TEST_NAME": name,
        "RELAYBUS_TEST_BROKER": broker,
        "RELAYBUS_TEST_SOURCE": source,
        "RELAYBUS_TEST_BINDING": route,
        "RELAYBUS_TEST_WORK_SECONDS": "0.002",
        # A killed member leaves the group after this; the successor waits for it.
        "RELAYBUS_KAFKA_SESSION_TIMEOUT_MS": "6000",
    }
    worker = RelaybusProcess(
        name, env, tmp_path / "worker.log", ["worker", "tests.support.consumer_apps:effects"]
    )
    total = 3_000  # three kills, each after 600 more effects, then the rest
    worker.start()
    try:
        if broker == "rabbitmq":
            # The queue must exist (declared by the worker) before anything is sent.
            async def declared() -> bool:
                return "started" in worker.log.read_text() and await _queue_exists(settings, source)

            await eventually(declared, within=60, what="queue declared")
        await send(settings, broker, route, [event(f"k{i % 97}", {"n": i}) for i in range(total)])
        kills = 0
        while kills < 3:
            rows_before = (await effect_count(engine, name))[0]

            async def progressed(floor: int = rows_before) -> bool:
                return (await effect_count(engine, name))[0] >= floor + 600

            await eventually(progressed, within=120, what=f"progress before kill {kills + 1}")
            worker.signal(signal.SIGKILL)
            kills += 1
            worker.start()

        async def all_applied() -> bool:
            return (await effect_count(engine, name))[1] == total

        await eventually(all_applied, within=240, what="all 3k messages applied")
    finally:
        worker.stop()
    rows, distinct = await effect_count(engine, name)
    print(f"\n{broker}: 3 SIGKILLs, {rows} effect rows for {distinct} messages")
    assert (rows, distinct) == (total, total)


async def _queue_exists(settings: Settings, queue: str) -> bool:
    import aio_pika

    connection = await aio_pika.connect(settings.rabbitmq)
    try:
        channel = await connection.channel()
        try:
            await channel.declare_queue(queue, passive=True)
        except aio_pika.exceptions.ChannelClosed:
            return False
        return True
    finally:
        await connection.close()


async def test_kafka_group_member_joining_and_leaving_mid_run_loses_and_doubles_nothing(
    settings: Settings, engine: AsyncEngine
) -> None:
    name, topic, _ = _names("kafka", "rebalance")
    total = 10_000

    def member() -> object:
        return make_app(name, broker="kafka", topic_or_queue=topic, work_seconds=0.003)

    async with running(member(), settings), running(member(), settings):  # type: ignore[arg-type]
        await send(settings, "kafka", topic, [event(f"k{i % 50}", {"n": i}) for i in range(total)])

        async def reached(n: int) -> bool:
            return (await effect_count(engine, name))[0] >= n

        await eventually(lambda: reached(1000), within=120, what="first 1000")
        async with running(member(), settings) as third:  # type: ignore[arg-type]
            third_stats = third.runners[0].processor.stats

            async def third_working() -> bool:
                return third_stats["done"] >= 300

            await eventually(third_working, within=120, what="third member applying messages")
        remaining = total - (await effect_count(engine, name))[0]
        # The third member left (graceful: revoke, commit); the other two take over.

        async def all_applied() -> bool:
            return (await effect_count(engine, name))[1] == total

        await eventually(all_applied, within=180, what="all messages applied")
    assert await effect_count(engine, name) == (total, total)
    assert remaining > 0, "the run ended before the third member left: not a mid-run test"


async def test_kafka_publish_subscribe_each_group_applies_every_message(
    settings: Settings, engine: AsyncEngine
) -> None:
    topic = f"t.{unique('fanout')}"
    a, b = unique("group-a"), unique("group-b")
    apps = [make_app(n, broker="kafka", topic_or_queue=topic) for n in (a, b)]
    async with running(apps[0], settings), running(apps[1], settings):
        await send(settings, "kafka", topic, [event(f"k{i}", {"n": i}) for i in range(200)])

        async def both_done() -> bool:
            return await effect_count(engine, a) == (200, 200) and (
                await effect_count(engine, b) == (200, 200)
            )

        await eventually(both_done, within=60, what="both groups applied all")


async def test_rabbitmq_competing_consumers_share_a_queue_and_bound_queues_each_get_all(
    settings: Settings, engine: AsyncEngine
) -> None:
    route = f"rk.{unique('p2p')}"
    queue, other_queue = f"q.{unique('shared')}", f"q.{unique('other')}"
    shared = unique("shared")
    other = unique("other")
    workers = [
        make_app(shared, broker="rabbitmq", topic_or_queue=queue, binding=route, work_seconds=0.01),
        make_app(shared, broker="rabbitmq", topic_or_queue=queue, binding=route, work_seconds=0.01),
        make_app(other, broker="rabbitmq", topic_or_queue=other_queue, binding=route),
    ]
    async with contextlib.AsyncExitStack() as stack:
        running_workers = [await stack.enter_async_context(running(w, settings)) for w in workers]
        await send(settings, "rabbitmq", route, [event(f"k{i}", {"n": i}) for i in range(300)])

        async def all_done() -> bool:
            return await effect_count(engine, shared) == (300, 300) and (
                await effect_count(engine, other) == (300, 300)
            )

        await eventually(all_done, within=90, what="both queues applied all")
        split = [w.runners[0].processor.stats["done"] for w in running_workers[:2]]
    # Point-to-point: the two competing consumers split one queue's messages.
    assert sum(split) == 300
    assert all(n > 0 for n in split), split


async def test_kafka_ordered_handler_retries_in_place_keeping_key_order(
    settings: Settings, engine: AsyncEngine
) -> None:
    name, topic, _ = _names("kafka", "ordered")
    policy = RetryPolicy(max_attempts=3, initial_delay=0.2, max_delay=0.5)
    app = make_app(name, broker="kafka", topic_or_queue=topic, ordered=True, retry=policy)
    sent = [event("one-key", {"n": i, "fail_times": 2 if i == 3 else 0}) for i in range(8)]
    async with running(app, settings):
        await send(settings, "kafka", topic, sent)

        async def done() -> bool:
            return (await effect_count(engine, name))[0] == 8

        await eventually(done, within=60, what="all applied")
    rows = await effects(engine, name)
    assert [r["n"] for r in rows] == list(range(8))
    assert [r["attempt"] for r in rows if r["n"] == 3] == [3]


async def test_redis_dedupe_skips_concurrent_duplicates(
    settings: Settings, engine: AsyncEngine
) -> None:
    name, topic, _ = _names("kafka", "redisdedupe")
    app = make_app(
        name, broker="kafka", topic_or_queue=topic, dedupe="redis", effects_engine=engine
    )
    copies = [event(f"k{i}", {"n": 1}) for i in range(3)]
    same_id = copies[0].headers["id"]
    copies = [type(c)(c.key, c.body, {**c.headers, "id": same_id}) for c in copies]
    async with running(app, settings) as worker:
        await send(settings, "kafka", topic, copies)
        stats = worker.runners[0].processor.stats

        async def seen() -> bool:
            return stats["done"] + stats["duplicate"] == 3

        await eventually(seen, within=60, what="three deliveries handled")
    assert await effect_count(engine, name) == (1, 1)
    redis = Redis.from_url(settings.redis_url)
    try:
        assert await redis.get(f"relaybus:dedupe:{name}:{same_id}") == b"done"
        assert await redis.pttl(f"relaybus:dedupe:{name}:{same_id}") > 0
    finally:
        await redis.aclose()


@pytest.mark.parametrize("broker", BROKERS)
async def test_redis_claim_of_a_killed_worker_is_retried_later_not_skipped(
    broker: str, settings: Settings, engine: AsyncEngine
) -> None:
    """A worker killed mid-handler leaves a live "processing" claim; the redelivery
    waits for it to expire and applies the message, never counts it a duplicate."""
    name, source, route = _names(broker, "redisclaim")
    binding = {"binding": route} if broker == "rabbitmq" else {}
    app = make_app(
        name,
        broker=broker,
        topic_or_queue=source,
        dedupe="redis",
        effects_engine=engine,
        **binding,  # type: ignore[arg-type]
    )
    message = event("k", {"n": 1})
    redis = Redis.from_url(settings.redis_url)
    try:
        # What the killed worker left behind: its claim, alive for another 1.5 s.
        key = f"relaybus:dedupe:{name}:{message.headers['id']}"
        await redis.set(key, b"processing", px=1500)
        async with running(app, settings) as worker:
            await send(settings, broker, route, [message])
            stats = worker.runners[0].processor.stats

            async def applied() -> bool:
                return await effect_count(engine, name) == (1, 1)

            await eventually(applied, within=60, what="applied once the claim expired")
        assert stats["claim-wait"] >= 1
        assert stats["duplicate"] == 0
        assert await redis.get(key) == b"done"
    finally:
        await redis.aclose()


@pytest.mark.parametrize("broker", BROKERS)
async def test_dlq_cli_lists_shows_and_purges_with_audit(
    broker: str, settings: Settings, engine: AsyncEngine
) -> None:
    name, source, route = _names(broker, "dlqcli")
    app = make_app(name, broker=broker, topic_or_queue=source, binding=route)
    dlq = f"{source}.dlq"
    async with running(app, settings):
        await send(
            settings, broker, route, [event("k", {"n": i, "schema_error": True}) for i in range(3)]
        )

        async def listed() -> bool:
            # In a thread: the worker shares this event loop and must keep running.
            result = await asyncio.to_thread(run_cli, "dlq", "ls", "--broker", broker, "--json")
            queues = {q["name"]: q["messages"] for q in json.loads(result.stdout)}
            return queues.get(dlq) == 3

        await eventually(listed, within=60, what="3 dead letters listed")
    shown = json.loads(run_cli("dlq", "show", dlq, "--broker", broker, "--json").stdout)
    assert {d["reason"] for d in shown} == {"schema"}
    assert all(d["consumer"] == name and d["original"] == source for d in shown)
    one = shown[0]["id"]
    only = json.loads(run_cli("dlq", "show", dlq, "--broker", broker, "--id", one, "--json").stdout)
    assert [d["id"] for d in only] == [one]

    refused = run_cli("dlq", "purge", dlq, "--broker", broker, input="n\n")
    assert refused.returncode != 0
    assert len(json.loads(run_cli("dlq", "show", dlq, "--broker", broker, "--json").stdout)) == 3
    purged = run_cli("dlq", "purge", dlq, "--broker", broker, "--yes")
    assert purged.returncode == 0, purged.stderr
    assert "purged 3" in purged.stdout
    assert json.loads(run_cli("dlq", "show", dlq, "--broker", broker, "--json").stdout) == []
    async with engine.connect() as conn:
        audited = (
            await conn.execute(
                text("SELECT count(*) FROM audit_log WHERE action = 'dlq.purge' AND target = :t"),
                {"t": dlq},
            )
        ).scalar_one()
    assert audited == 1

    bad = run_cli("dlq", "show", "not-a-dlq", "--broker", broker)
    assert bad.returncode == 2
    assert "names end in '.dlq'" in bad.stderr
    missing = run_cli("dlq", "show", f"{source}-missing.dlq", "--broker", broker)
    assert missing.returncode == 1
    assert "Traceback" not in missing.stderr
