"""Handlers on ``TestBroker`` (the in-memory broker under the worker's own consume
loop), without Kafka or RabbitMQ: what a user's unit tests rely on. The same
behaviours on the real brokers: tests/integration/test_subscriber_contract.py."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest

from relaybus.consumers import ConsumerApp, Incoming, InvalidMessage, RetryPolicy
from relaybus.consumers.memory_broker import InMemoryBroker, binding_matches
from relaybus.consumers.testing import TestBroker
from relaybus.message import Message

FAST = RetryPolicy(max_attempts=3, initial_delay=0.01, multiplier=1.0, max_delay=0.05, jitter=0)


def shop() -> tuple[ConsumerApp, dict[str, list[Any]]]:
    seen: dict[str, list[Any]] = defaultdict(list)
    app = ConsumerApp("test")

    @app.kafka("outbox.event.user", group="welcome", dedupe="none", retry=FAST,
               types={"user.registered", "user.poison"})  # fmt: skip
    async def welcome(message: Incoming, session: object) -> None:
        if message.type == "user.poison":
            raise RuntimeError("cannot welcome a poison user")
        if message.payload.get("bad"):
            raise InvalidMessage("schema", "bad user")
        seen[message.key].append(message.payload["n"])

    @app.rabbitmq("emails", binding="user.*", dedupe="none", retry=FAST)
    async def email(message: Incoming, session: object) -> None:
        seen["emails"].append(message.type)

    return app, seen


def user(key: str, n: int, type_: str = "user.registered", **extra: Any) -> Message:
    return Message.from_data(type_, "user", key, {"n": n, **extra})


async def test_each_message_is_handled_once_in_key_order() -> None:
    app, seen = shop()
    async with TestBroker(app) as broker:
        await broker.publish(*[user(f"k{i % 3}", i) for i in range(30)])
        await broker.idle()
        assert {k: v for k, v in seen.items() if k != "emails"} == {
            f"k{r}": [i for i in range(30) if i % 3 == r] for r in range(3)
        }
        assert broker.stats("welcome")["done"] == 30
        assert broker.dead_letters("outbox.event.user") == []


async def test_a_failing_message_is_retried_then_dead_lettered_with_its_reason() -> None:
    app, seen = shop()
    async with TestBroker(app) as broker:
        await broker.publish(user("k1", 1), user("k2", 2, "user.poison"), user("k1", 3))
        await broker.idle()
        letters = broker.dead_letters("outbox.event.user")
        assert [(letter.reason, letter.json()) for letter in letters] == [
            ("max-attempts", {"n": 2})
        ]
        assert letters[0].headers["x-attempts"] == "3"
        assert "cannot welcome a poison user" in letters[0].headers["x-exception-message"]
        assert seen["k1"] == [1, 3]


async def test_refusals_are_dead_lettered_with_named_reasons() -> None:
    app, seen = shop()
    async with TestBroker(app) as broker:
        good = user("k1", 1)
        await broker.broker.append("outbox.event.user", b"{not json", b"k1", good.kafka_headers())
        await broker.publish(user("k1", 2, "user.deleted"), user("k1", 3, bad=True), user("k1", 4))
        await broker.idle()
        reasons = [letter.reason for letter in broker.dead_letters("outbox.event.user")]
        assert reasons == ["not-json", "unknown-type", "schema"]
        assert seen["k1"] == [4]


async def test_a_queue_gets_the_types_its_binding_matches() -> None:
    app, seen = shop()
    async with TestBroker(app) as broker:
        await broker.publish(user("k1", 1), Message.from_data("order.created", "order", "o", {}))
        await broker.idle()
        assert seen["emails"] == ["user.registered"]


@pytest.mark.parametrize(
    ("binding", "key", "matches"),
    [
        ("user.*", "user.registered", True),
        ("user.*", "user.registered.again", False),
        ("user.#", "user.registered.again", True),
        ("#", "anything.at.all", True),
        ("#.created", "order.created", True),
        ("*.created", "created", False),
        ("order.created", "order.created", True),
    ],
)
def test_bindings_match_like_a_topic_exchange(binding: str, key: str, matches: bool) -> None:
    assert binding_matches(binding, key) is matches


async def test_a_broker_that_is_down_refuses_to_publish() -> None:
    from relaybus.brokers.publisher import PublishError

    broker = InMemoryBroker()
    broker.down = True
    with pytest.raises(PublishError):
        await broker.publish([user("k", 1)])
