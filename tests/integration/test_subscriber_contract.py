"""One subscriber contract, three implementations: the in-memory broker (``TestBroker``,
what a user's unit tests run on), real Kafka and real RabbitMQ. The same handler (the
inbox on the real database) and the same records, written by a client that is not
relaybus; each test asserts the same outcome on each broker.

- every message applied once, each key's messages in order (on RabbitMQ a queue's
  deliveries run concurrently up to ``concurrency``: in order with ``concurrency=1``);
- a message delivered three times with one id: one effect;
- a message that keeps failing: retried up to the policy, then dead-lettered with
  ``max-attempts``, its key's later messages still applied;
- a body that is not JSON: dead-lettered ``not-json``; a forged ``x-attempts`` on a
  first delivery steers nothing (attempt 1).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.consumers.app import ConsumerApp
from relaybus.consumers.dlq_admin import KafkaDeadLetters, RabbitDeadLetters, collect
from relaybus.consumers.testing import TestBroker
from relaybus.db import session_factory
from relaybus.ids import uuid7
from relaybus.settings import Settings
from tests.support.consumer_apps import make_app
from tests.support.consumerdata import Raw, effects, event, running, send, unique
from tests.support.poll import eventually

pytestmark = pytest.mark.usefixtures("effects_table")
IMPLEMENTATIONS = ["memory", "kafka", "rabbitmq"]


@dataclass
class Harness:
    """One implementation: how its app runs, where records go, its dead letters."""

    kind: str
    name: str
    source: str  # the topic or queue the handler reads
    route: str  # where a client writes: the topic, or the routing key bound to the queue
    settings: Settings
    engine: AsyncEngine
    broker: TestBroker | None = None

    def app(self, **options: Any) -> ConsumerApp:
        on = "rabbitmq" if self.kind == "rabbitmq" else "kafka"
        binding = {"binding": self.route} if on == "rabbitmq" else {}
        return make_app(self.name, broker=on, topic_or_queue=self.source, **binding, **options)

    @contextlib.asynccontextmanager
    async def running(self, app: ConsumerApp) -> AsyncIterator[None]:
        if self.kind == "memory":
            async with TestBroker(app, sessions=session_factory(self.engine)) as broker:
                self.broker = broker
                yield
        else:
            async with running(app, self.settings):
                yield

    async def send(self, records: Sequence[Raw]) -> None:
        if self.broker is not None:
            for r in records:
                headers = [(k, v.encode()) for k, v in r.headers.items()]
                await self.broker.broker.append(self.route, r.body, r.key.encode(), headers)
        else:
            await send(self.settings, self.kind, self.route, records)

    async def letters(self) -> list[tuple[str | None, dict[str, str]]]:
        """(reason, headers) of each dead letter."""
        if self.broker is not None:
            return [(x.reason, x.headers) for x in self.broker.dead_letters(self.source)]
        store = (
            KafkaDeadLetters(self.settings.kafka_bootstrap)
            if self.kind == "kafka"
            else RabbitDeadLetters(self.settings.rabbitmq, self.settings.rabbitmq_management)
        )
        found = await collect(store, f"{self.source}.dlq")
        return [(letter.headers.get("x-dlq-reason"), dict(letter.headers)) for letter in found]

    async def until(self, probe: Callable[[], Any], what: str) -> None:
        async def check() -> bool:
            return bool(await probe())

        await eventually(check, within=60, what=f"{self.kind}: {what}")


@pytest.fixture(params=IMPLEMENTATIONS)
def harness(request: pytest.FixtureRequest, settings: Settings, engine: AsyncEngine) -> Harness:
    name = unique(f"sc-{request.param}")
    if request.param == "rabbitmq":
        return Harness(request.param, name, f"q.{name}", f"rk.{name}", settings, engine)
    return Harness(request.param, name, f"t.{name}", f"t.{name}", settings, engine)


async def test_each_message_once_and_each_key_in_order(harness: Harness) -> None:
    records = [event(f"k{i % 5}", {"n": i}) for i in range(200)]
    lanes = {"concurrency": 1} if harness.kind == "rabbitmq" else {}
    async with harness.running(harness.app(**lanes)):
        await harness.send(records)

        async def applied() -> bool:
            return len(await effects(harness.engine, harness.name)) >= 200

        await harness.until(applied, "200 effects")
    rows = await effects(harness.engine, harness.name)
    assert sorted(r["n"] for r in rows) == list(range(200))
    for key in {r["key"] for r in rows}:
        ns = [r["n"] for r in rows if r["key"] == key]
        assert ns == sorted(ns), (harness.kind, key)
    assert await harness.letters() == []


async def test_one_id_delivered_three_times_has_one_effect(harness: Harness) -> None:
    same = uuid7()
    async with harness.running(harness.app()):
        await harness.send([event("k", {"n": 1}, id=same)] * 3 + [event("k", {"n": 2})])

        async def applied() -> bool:
            return len(await effects(harness.engine, harness.name)) >= 2

        await harness.until(applied, "both messages")
    rows = await effects(harness.engine, harness.name)
    # Sorted: RabbitMQ runs a queue's deliveries side by side (order is the first test's).
    assert sorted(r["n"] for r in rows) == [1, 2]


async def test_a_message_that_keeps_failing_is_dead_lettered_after_its_attempts(
    harness: Harness,
) -> None:
    poison = event("k", {"n": 1, "fail_times": 99})
    async with harness.running(harness.app()):
        await harness.send([poison, event("k", {"n": 2}), event("other", {"n": 3})])
        await harness.until(harness.letters, "a dead letter")

        async def applied() -> bool:
            return len(await effects(harness.engine, harness.name)) >= 2

        await harness.until(applied, "the other messages")
    ((reason, headers),) = await harness.letters()
    assert reason == "max-attempts"
    assert headers["x-attempts"] == "3"
    assert headers["id"] == poison.id
    assert sorted(r["n"] for r in await effects(harness.engine, harness.name)) == [2, 3]


async def test_a_body_that_is_not_json_is_dead_lettered_and_forged_attempts_steer_nothing(
    harness: Harness,
) -> None:
    good = event("k", {"n": 1})
    bad = Raw("k", b"{not json", {**event("k", {}).headers})
    forged = event("k", {"n": 2})
    forged.headers["x-attempts"] = "7"
    async with harness.running(harness.app()):
        await harness.send([good, bad, forged])
        await harness.until(harness.letters, "a dead letter")

        async def applied() -> bool:
            return len(await effects(harness.engine, harness.name)) >= 2

        await harness.until(applied, "the good messages")
    ((reason, _),) = await harness.letters()
    assert reason == "not-json"
    rows = await effects(harness.engine, harness.name)
    assert sorted((r["n"], r["attempt"]) for r in rows) == [(1, 1), (2, 1)]
