"""Consumer apps for tests: a handler that records effects and fails on request.

``effects()`` is what ``relaybus worker tests.support.consumer_apps:effects`` runs in
a subprocess; it is configured by ``RELAYBUS_TEST_*`` variables because every test
uses its own topic/queue. In-process tests call ``make_app`` directly.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from relaybus.consumers.app import ConsumerApp, Dedupe, HandlerFunc
from relaybus.consumers.breaker import CircuitBreaker
from relaybus.consumers.incoming import Incoming, InvalidMessage
from relaybus.consumers.policy import RetryPolicy

EFFECTS_DDL = (
    "CREATE TABLE IF NOT EXISTS consumer_effects (consumer text NOT NULL, "
    "message_id uuid NOT NULL, key text NOT NULL, n integer, attempt integer NOT NULL, "
    "at timestamptz NOT NULL DEFAULT clock_timestamp())"
)
FAST_RETRY = RetryPolicy(max_attempts=3, initial_delay=0.2, multiplier=2.0, max_delay=1.0)
TEST_TYPE = "test.event"


class Switches:
    """Behaviour a test flips while the handler runs (in-process tests)."""

    def __init__(self) -> None:
        self.fixed = False
        self.dependency_up = True
        self.calls = 0


def recording_handler(
    name: str,
    switches: Switches,
    work_seconds: float = 0.0,
    effects_engine: AsyncEngine | None = None,
) -> HandlerFunc:
    """Records ``(consumer, id, key, n, attempt)`` in ``consumer_effects``.

    Payload controls failure: ``fail_times: k`` fails the first k attempts;
    ``fail: "until-fixed"`` fails until ``switches.fixed``; ``schema_error`` raises
    ``InvalidMessage``; ``dependency`` fails while ``switches.dependency_up`` is off.
    Without a session (Redis / no dedupe) it writes through ``effects_engine``.
    """

    async def handle(message: Incoming, session: AsyncSession | None) -> None:
        switches.calls += 1
        payload = message.payload if isinstance(message.payload, dict) else {}
        if work_seconds:
            await asyncio.sleep(work_seconds)  # simulated work, so kills land mid-handler
        if payload.get("sleep"):
            await asyncio.sleep(float(payload["sleep"]))  # slower than the handler timeout
        if payload.get("schema_error"):
            raise InvalidMessage("schema", "field 'n' must be an integer")
        if message.attempt <= int(payload.get("fail_times", 0)):
            raise RuntimeError(f"planned failure on attempt {message.attempt}")
        if payload.get("fail") == "until-fixed" and not switches.fixed:
            raise RuntimeError("handler is broken until fixed")
        if payload.get("dependency") and not switches.dependency_up:
            raise ConnectionError("payments service unavailable")
        params = {
            "c": name,
            "id": message.id,
            "k": message.key,
            "n": payload.get("n"),
            "a": message.attempt,
        }
        insert = text(
            "INSERT INTO consumer_effects (consumer, message_id, key, n, attempt) "
            "VALUES (:c, :id, :k, :n, :a)"
        )
        if session is not None:
            await session.execute(insert, params)
        else:
            assert effects_engine is not None
            async with effects_engine.begin() as conn:
                await conn.execute(insert, params)

    return handle


def make_app(
    name: str,
    *,
    broker: str,
    topic_or_queue: str,
    group: str | None = None,
    binding: str = "#",
    switches: Switches | None = None,
    dedupe: Dedupe = "inbox",
    retry: RetryPolicy = FAST_RETRY,
    breaker: CircuitBreaker | None = None,
    ordered: bool = False,
    work_seconds: float = 0.0,
    concurrency: int = 16,
    timeout: float = 10.0,
    effects_engine: AsyncEngine | None = None,
    **handler_options: object,
) -> ConsumerApp:
    app = ConsumerApp(f"test-{name}")
    func = recording_handler(name, switches or Switches(), work_seconds, effects_engine)
    options: dict[str, object] = {
        "dedupe": dedupe,
        "retry": retry,
        "breaker": breaker,
        "types": {TEST_TYPE},
        "concurrency": concurrency,
        "timeout": timeout,
        **handler_options,
    }
    register: Callable[[HandlerFunc], HandlerFunc]
    if broker == "kafka":
        register = app.kafka(
            topic_or_queue, group=group or name, name=name, ordered=ordered, **options
        )
    else:
        register = app.rabbitmq(topic_or_queue, binding=binding, name=name, **options)
    register(func)
    return app


def effects() -> ConsumerApp:
    """The subprocess worker: ``RELAYBUS_TEST_{NAME,BROKER,SOURCE,BINDING,WORK_SECONDS,
    ORDERED}`` (``ORDERED=1``: a Kafka key's messages are handled one after another)."""
    env = os.environ
    return make_app(
        env["RELAYBUS_TEST_NAME"],
        broker=env["RELAYBUS_TEST_BROKER"],
        topic_or_queue=env["RELAYBUS_TEST_SOURCE"],
        binding=env.get("RELAYBUS_TEST_BINDING", "#"),
        work_seconds=float(env.get("RELAYBUS_TEST_WORK_SECONDS", "0")),
        ordered=env.get("RELAYBUS_TEST_ORDERED") == "1",
    )
