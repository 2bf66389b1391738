"""The consumer contract, run against real Kafka and real RabbitMQ."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus import headers as h
from relaybus.consumers.breaker import BreakerState, CircuitBreaker
from relaybus.consumers.dlq_admin import (
    DeadLetterStore,
    KafkaDeadLetters,
    RabbitDeadLetters,
    collect,
)
from relaybus.consumers.inbox import Inbox
from relaybus.consumers.policy import RetryPolicy
from relaybus.ids import uuid7
from relaybus.settings import Settings
from tests.support.cli import run_cli
from tests.support.consumer_apps import Switches, make_app
from tests.support.consumerdata import (
    Raw,
    effect_count,
    effects,
    event,
    running,
    send,
    unique,
)
from tests.support.poll import eventually

BROKERS = ["kafka", "rabbitmq"]


pytestmark = pytest.mark.usefixtures("effects_table")


@dataclass
class Case:
    """One consumer under test: its name, where messages are sent, its DLQ."""

    broker: str
    name: str
    source: str  # Kafka topic, or the queue name for RabbitMQ
    route: str  # where tests send: the topic, or the routing key bound to the queue

    @property
    def dlq(self) -> str:
        return f"{self.source}.dlq"

    def app_args(self) -> dict[str, object]:
        binding = {"binding": self.route} if self.broker == "rabbitmq" else {}
        return {"broker": self.broker, "topic_or_queue": self.source, **binding}

    def dead_letters(self, settings: Settings) -> DeadLetterStore:
        if self.broker == "kafka":
            return KafkaDeadLetters(settings.kafka_bootstrap)
        return RabbitDeadLetters(settings.rabbitmq, settings.rabbitmq_management)


def new_case(broker: str, prefix: str) -> Case:
    name = unique(prefix)
    if broker == "kafka":
        return Case(broker, name, f"t.{name}", f"t.{name}")
    return Case(broker, name, f"q.{name}", f"rk.{name}")


@pytest.mark.parametrize("broker", BROKERS)
async def test_same_id_delivered_three_times_concurrently_has_one_effect(
    broker: str, settings: Settings, engine: AsyncEngine
) -> None:
    case = new_case(broker, "dup")
    app = make_app(case.name, **case.app_args())  # type: ignore[arg-type]
    message_id = uuid7()
    # Different keys put the copies in different lanes (and partitions): they really
    # run at the same time, racing on the inbox row.
    copies = [event(f"k{i}", {"n": 1}, id=message_id) for i in range(3)]
    async with running(app, settings) as worker:
        await send(settings, broker, case.route, copies)
        stats = worker.runners[0].processor.stats

        async def all_seen() -> bool:
            return stats["done"] + stats["duplicate"] == 3

        await eventually(all_seen, within=60, what="three deliveries handled")
    assert await effect_count(engine, case.name) == (1, 1)
    assert stats["duplicate"] == 2


@pytest.mark.parametrize("broker", BROKERS)
async def test_failing_twice_then_succeeding_applies_once_after_backoff(
    broker: str, settings: Settings, engine: AsyncEngine
) -> None:
    case = new_case(broker, "flaky")
    app = make_app(case.name, **case.app_args())  # type: ignore[arg-type]
    async with running(app, settings) as worker:
        await send(settings, broker, case.route, [event("k", {"n": 7, "fail_times": 2})])

        async def applied() -> bool:
            return await effect_count(engine, case.name) == (1, 1)

        await eventually(applied, within=60, what="effect after two failures")
        stats = worker.runners[0].processor.stats
    rows = await effects(engine, case.name)
    assert [(r["n"], r["attempt"]) for r in rows] == [(7, 3)]
    assert stats["retried"] == 2
    assert stats["dead"] == 0


@pytest.mark.parametrize("broker", BROKERS)
async def test_always_failing_is_dead_lettered_then_replayed_once_fixed(
    broker: str, settings: Settings, engine: AsyncEngine
) -> None:
    case = new_case(broker, "dead")
    switches = Switches()
    app = make_app(case.name, switches=switches, **case.app_args())  # type: ignore[arg-type]
    sent = event("k", {"n": 1, "fail": "until-fixed"})
    store = case.dead_letters(settings)
    async with running(app, settings) as worker:
        await send(settings, broker, case.route, [sent])

        async def dead_lettered() -> bool:
            return len(await collect(store, case.dlq)) == 1

        await eventually(dead_lettered, within=60, what="dead letter")
        (letter,) = await collect(store, case.dlq)
        assert letter.body == sent.body  # byte-identical
        for name in h.DEAD_LETTER:
            assert name in letter.headers, name
        assert letter.headers[h.DLQ_REASON] == "max-attempts"
        assert letter.headers[h.EXCEPTION_TYPE] == "RuntimeError"
        assert "broken until fixed" in letter.headers[h.EXCEPTION_MESSAGE]
        assert "Traceback" in letter.headers[h.STACKTRACE]
        assert letter.headers[h.ATTEMPTS] == "3"
        assert letter.headers[h.ORIGINAL_TOPIC] == case.source
        assert letter.headers[h.CONSUMER] == case.name
        assert letter.headers["id"] == sent.id
        if broker == "kafka":
            assert letter.headers[h.ORIGINAL_PARTITION] != ""
            assert letter.headers[h.ORIGINAL_OFFSET] != ""
        assert await effect_count(engine, case.name) == (0, 0)

        switches.fixed = True
        result = await asyncio.to_thread(  # in a thread: the worker shares this loop
            run_cli, *("dlq", "replay", case.dlq, "--broker", broker, "--id", sent.id, "--yes")
        )
        assert result.returncode == 0, result.stderr
        assert "replayed 1" in result.stdout

        async def applied() -> bool:
            return await effect_count(engine, case.name) == (1, 1)

        await eventually(applied, within=60, what="effect after replay")
        stats = worker.runners[0].processor.stats
        async with engine.connect() as conn:
            audited = await conn.scalar(
                text("SELECT detail FROM audit_log WHERE action = 'dlq.replay' AND target = :t"),
                {"t": case.dlq},
            )
        assert audited is not None
        assert audited["ids"] == [sent.id]
        if broker == "rabbitmq":
            assert await collect(store, case.dlq) == []  # replayed letters leave the queue
        else:
            # A Kafka DLQ is a log: replaying again re-sends the same id, and the inbox
            # turns it into a counted duplicate, not a second effect.
            again = await asyncio.to_thread(
                run_cli, *("dlq", "replay", case.dlq, "--broker", broker, "--yes")
            )
            assert again.returncode == 0, again.stderr

            async def duplicate_seen() -> bool:
                return stats["duplicate"] >= 1

            await eventually(duplicate_seen, within=60, what="second replay consumed")
    assert await effect_count(engine, case.name) == (1, 1)


@pytest.mark.parametrize("broker", BROKERS)
async def test_malformed_messages_are_dead_lettered_and_later_ones_processed(
    broker: str, settings: Settings, engine: AsyncEngine
) -> None:
    case = new_case(broker, "bad")
    app = make_app(case.name, **case.app_args())  # type: ignore[arg-type]
    good_headers = event("k", {"n": 0}).headers
    bad = [
        Raw("k", b"this is not json", {**good_headers, "id": str(uuid7())}),
        Raw("k", b'{"n": 1', {**good_headers, "id": str(uuid7())}),  # truncated
        Raw("k", b'{"n": 2}', {**good_headers, "id": str(uuid7()), "type": "no.such.type"}),
        Raw("k", b'{"n": 3}', {**good_headers, "id": "not-a-uuid"}),
        event("k", {"n": 4, "schema_error": True}),
    ]
    after = event("k", {"n": 5})
    store = case.dead_letters(settings)
    async with running(app, settings):
        await send(settings, broker, case.route, [*bad, after])

        async def handled() -> bool:
            done = await effect_count(engine, case.name) == (1, 1)
            return done and len(await collect(store, case.dlq)) == len(bad)

        await eventually(handled, within=60, what="good message processed, bad ones dead")
    letters = await collect(store, case.dlq)
    reasons = sorted(d.reason for d in letters)
    assert reasons == sorted(["not-json", "not-json", "unknown-type", "bad-id", "schema"])
    assert sorted(d.body for d in letters) == sorted(r.body for r in bad)
    assert [r["n"] for r in await effects(engine, case.name)] == [5]


@pytest.mark.parametrize("broker", BROKERS)
async def test_breaker_pauses_consumption_while_dependency_fails_and_closes_after(
    broker: str, settings: Settings, engine: AsyncEngine
) -> None:
    case = new_case(broker, "breaker")
    switches = Switches()
    switches.dependency_up = False
    breaker = CircuitBreaker("payments", failure_threshold=3, reset_timeout=0.5)
    # Enough attempts that the few half-open probes cannot exhaust any message.
    patient = RetryPolicy(max_attempts=10, initial_delay=0.2, max_delay=1.0)
    app = make_app(
        case.name,
        switches=switches,
        breaker=breaker,
        concurrency=1,
        retry=patient,
        **case.app_args(),  # type: ignore[arg-type]
    )
    messages = [event(f"k{i}", {"n": i, "dependency": True}) for i in range(20)]
    async with running(app, settings) as worker:
        await send(settings, broker, case.route, messages)
        stats = worker.runners[0].processor.stats

        async def opened() -> bool:
            return breaker.opened_count >= 1

        await eventually(opened, within=60, what="breaker open")
        # Failures before it opened were ordinary failed attempts (retried).
        retried_before = stats["retried"]
        assert retried_before <= breaker.failure_threshold - 1
        calls_at_open = switches.calls

        async def probed_twice() -> bool:
            return switches.calls >= calls_at_open + 2

        await eventually(probed_twice, within=60, what="two half-open probes")
        # Paused: only probes (one at a time) reached the handler, and each failed probe
        # used up an attempt of its message (so a poison message cannot hold the
        # breaker forever); nothing else was retried and nothing went to the DLQ.
        assert breaker.state is not BreakerState.CLOSED
        probes = switches.calls - calls_at_open
        assert stats["retried"] - retried_before in (probes, probes - 1)  # one may be running
        assert stats["dead"] == 0
        assert await effect_count(engine, case.name) == (0, 0)

        switches.dependency_up = True

        async def all_applied() -> bool:
            return await effect_count(engine, case.name) == (20, 20)

        await eventually(all_applied, within=60, what="all applied after recovery")
        assert breaker.state is BreakerState.CLOSED
        assert stats["dead"] == 0


@pytest.mark.parametrize("broker", BROKERS)
async def test_handler_slower_than_its_timeout_fails_each_attempt_and_is_dead_lettered(
    broker: str, settings: Settings, engine: AsyncEngine
) -> None:
    case = new_case(broker, "slow")
    app = make_app(case.name, timeout=0.3, **case.app_args())  # type: ignore[arg-type]
    store = case.dead_letters(settings)
    async with running(app, settings) as worker:
        await send(settings, broker, case.route, [event("k", {"n": 1, "sleep": 5})])

        async def dead_lettered() -> bool:
            return len(await collect(store, case.dlq)) == 1

        await eventually(dead_lettered, within=60, what="timed-out message dead-lettered")
        stats = worker.runners[0].processor.stats
    (letter,) = await collect(store, case.dlq)
    assert letter.headers[h.EXCEPTION_TYPE] == "TimeoutError"
    assert letter.headers[h.ATTEMPTS] == "3"
    assert stats["retried"] == 2
    assert await effect_count(engine, case.name) == (0, 0)


async def test_kafka_keeps_per_key_order_while_keys_run_concurrently(
    settings: Settings, engine: AsyncEngine
) -> None:
    case = new_case("kafka", "order")
    app = make_app(case.name, work_seconds=0.001, **case.app_args())  # type: ignore[arg-type]
    sent = [event(f"key-{i % 20}", {"n": i // 20}) for i in range(1000)]
    async with running(app, settings):
        await send(settings, "kafka", case.route, sent)

        async def applied() -> bool:
            return (await effect_count(engine, case.name))[0] == 1000

        await eventually(applied, within=120, what="all applied")
    by_key: dict[str, list[int]] = {}
    for row in await effects(engine, case.name):  # in commit order
        by_key.setdefault(row["key"], []).append(row["n"])
    assert len(by_key) == 20
    assert all(ns == list(range(50)) for ns in by_key.values())


async def test_inbox_retention_purge_drops_only_old_rows(engine: AsyncEngine) -> None:
    consumer = unique("purge")
    old, recent = uuid7(), uuid7()
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO inbox (consumer, message_id, processed_at) VALUES "
                "(:c, :old, now() - interval '8 days'), (:c, :recent, now())"
            ),
            {"c": consumer, "old": old, "recent": recent},
        )
    assert await Inbox().purge(engine, older_than_days=7) >= 1
    async with engine.connect() as conn:
        left = (
            (
                await conn.execute(
                    text("SELECT message_id FROM inbox WHERE consumer = :c"), {"c": consumer}
                )
            )
            .scalars()
            .all()
        )
    assert left == [recent]


@pytest.mark.parametrize("broker", BROKERS)
async def test_poison_message_behind_an_open_breaker_reaches_the_dlq(
    broker: str, settings: Settings, engine: AsyncEngine
) -> None:
    """A message that always fails opens the breaker; its half-open probes use up its
    attempts, so it is dead-lettered, and the next message is applied."""
    case = new_case(broker, "poison")
    breaker = CircuitBreaker("dep", failure_threshold=1, reset_timeout=0.3)
    app = make_app(case.name, breaker=breaker, concurrency=1, **case.app_args())  # type: ignore[arg-type]
    poison = event("k", {"n": 1, "fail": "until-fixed"})
    good = event("k", {"n": 2})
    store = case.dead_letters(settings)
    async with running(app, settings) as worker:
        await send(settings, broker, case.route, [poison, good])

        async def settled() -> bool:
            letters = await collect(store, case.dlq)
            return len(letters) == 1 and await effect_count(engine, case.name) == (1, 1)

        await eventually(settled, within=90, what="poison dead-lettered, good applied")
        (letter,) = await collect(store, case.dlq)
        assert letter.id == poison.id
        assert letter.reason == "max-attempts"
        assert [r["n"] for r in await effects(engine, case.name)] == [2]
        assert worker.runners[0].processor.stats["dead"] == 1
