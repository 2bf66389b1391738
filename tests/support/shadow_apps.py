"""Handler versions for shadow replay tests, configured like ``consumer_apps.effects``
by ``RELAYBUS_TEST_{NAME,BROKER,SOURCE,BINDING,TYPE}`` (each test its own topic or queue).

- ``live``: records the effect and writes one outbox event (an outbound send) per
  message; dead-letters ``schema_error`` payloads (``schema``).
- ``same``: the same code, as the deploy under test.
- ``strict``: rejects any payload carrying ``colour`` (a field yesterday's events
  carry): what a shadow run must catch.
- ``flaky``: raises on every tenth ``n`` (an exception, not a refusal).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from relaybus.consumers.app import ConsumerApp
from relaybus.consumers.incoming import Incoming, InvalidMessage
from relaybus.outbox.writer import Outbox
from tests.support.consumer_apps import FAST_RETRY, TEST_TYPE

Check = Callable[[dict[str, object]], None]


def _app(check: Check) -> ConsumerApp:
    env = os.environ
    name, broker, source = (
        env["RELAYBUS_TEST_NAME"],
        env["RELAYBUS_TEST_BROKER"],
        env["RELAYBUS_TEST_SOURCE"],
    )
    outbox = Outbox()

    async def handle(message: Incoming, session: AsyncSession | None) -> None:
        assert session is not None
        payload = message.payload if isinstance(message.payload, dict) else {}
        if payload.get("schema_error"):
            raise InvalidMessage("schema", "field 'n' must be an integer")
        check(payload)
        await session.execute(
            text(
                "INSERT INTO consumer_effects (consumer, message_id, key, n, attempt) "
                "VALUES (:c, :id, :k, :n, :a)"
            ),
            {"c": name, "id": message.id, "k": message.key, "n": payload.get("n"), "a": 1},
        )
        await outbox.enqueue(
            session,
            aggregate_type=f"{name}-out",
            aggregate_id=message.key,
            type="test.shipped",
            payload={"of": str(message.id)},
        )

    app = ConsumerApp(f"shadow-{name}")
    options: dict[str, object] = {
        "types": {env.get("RELAYBUS_TEST_TYPE", TEST_TYPE)},
        "retry": FAST_RETRY,
    }
    register: Callable[[Callable[..., Awaitable[None]]], Callable[..., Awaitable[None]]]
    if broker == "kafka":
        register = app.kafka(source, group=name, name=name, ordered=False, **options)
    else:
        register = app.rabbitmq(
            source, binding=env.get("RELAYBUS_TEST_BINDING", "#"), name=name, **options
        )
    register(handle)
    return app


def _accept(payload: dict[str, object]) -> None:
    return None


def _no_colour(payload: dict[str, object]) -> None:
    if "colour" in payload:
        raise InvalidMessage("schema", "colour: extra_forbidden")


def _flaky(payload: dict[str, object]) -> None:
    n = payload.get("n")
    if isinstance(n, int) and n % 10 == 0:
        raise RuntimeError(f"cannot ship parcel {n}")


def live() -> ConsumerApp:
    return _app(_accept)


def same() -> ConsumerApp:
    return _app(_accept)


def strict() -> ConsumerApp:
    return _app(_no_colour)


def flaky() -> ConsumerApp:
    return _app(_flaky)
