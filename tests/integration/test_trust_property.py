"""Property: whatever body and headers a foreign client sends, through the real Kafka
(kcat) and RabbitMQ (management API) paths, each record is applied once or
dead-lettered once — never both, never neither — and the worker stays alive.

Hypothesis drives a synchronous test; the worker runs on its own event loop in a
thread, and each example waits (polling with a deadline) for its record's fate.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.consumers.dlq_admin import DeadLetterStore, collect
from relaybus.consumers.worker import Worker
from relaybus.db import create_engine
from relaybus.ids import uuid7
from relaybus.settings import Settings
from tests.integration.test_consumers import BROKERS, Case, new_case
from tests.support.consumer_apps import EFFECTS_DDL, TEST_TYPE, make_app
from tests.support.foreign import Hostile, kcat_produce, rabbit_foreign_send

T = TypeVar("T")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
bodies = st.one_of(
    st.builds(lambda v, n: json.dumps({"n": n, "v": v}).encode(), json_values, st.integers()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")),
)
header_names = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="="),
    min_size=1,
    max_size=12,
)
header_sets = st.dictionaries(
    st.one_of(header_names, st.sampled_from(["x-attempts", "x-retry-at", "x-consumer"])),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FFF), max_size=30),
    max_size=6,
).map(lambda h: {k: v for k, v in h.items() if k not in ("id", "type")})


class WorkerThread:
    """A worker on its own event loop in a thread, for synchronous hypothesis tests."""

    def __init__(self, case: Case, settings_: Settings) -> None:
        self.case = case
        self.settings = settings_
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> WorkerThread:
        self.thread.start()
        app = make_app(self.case.name, require_object=True, **self.case.app_args())  # type: ignore[arg-type]

        async def start() -> tuple[Worker, AsyncEngine, DeadLetterStore]:
            engine = create_engine(self.settings.database_url)
            async with engine.begin() as conn:
                await conn.execute(text(EFFECTS_DDL))
            worker = Worker(app, self.settings)
            self.task = asyncio.create_task(worker.run(self.stop))
            await asyncio.wait_for(worker.ready(), 90)
            return worker, engine, self.case.dead_letters(self.settings)

        self.worker, self.engine, self.store = self.run(start())
        return self

    def __exit__(self, *exc: object) -> None:
        async def finish() -> None:
            self.stop.set()
            assert self.task is not None
            await asyncio.wait_for(self.task, 90)
            await self.engine.dispose()

        self.run(finish())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def alive(self) -> bool:
        return self.task is not None and not self.task.done()

    async def fate(self, message_id: str) -> tuple[int, int]:
        """(effects, dead letters) recorded for ``message_id``."""
        async with self.engine.connect() as conn:
            applied = await conn.scalar(
                text(
                    "SELECT count(*) FROM consumer_effects WHERE consumer = :c "
                    "AND message_id = CAST(:m AS uuid)"
                ),
                {"c": self.case.name, "m": message_id},
            )
        letters = await collect(self.store, self.case.dlq, select=lambda d: d.id == message_id)
        return int(applied or 0), len(letters)


@pytest.fixture(params=BROKERS)
def worker_thread(request: pytest.FixtureRequest, settings: Settings) -> Iterator[WorkerThread]:
    with WorkerThread(new_case(request.param, "prop"), settings) as running_worker:
        yield running_worker


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=bodies, headers=header_sets)
def test_each_record_is_applied_once_or_dead_lettered_once(
    worker_thread: WorkerThread, body: bytes, headers: dict[str, str]
) -> None:
    w = worker_thread
    # kcat sends nothing for an empty file; empty bodies are covered on RabbitMQ and in
    # test_trust_boundary (truncated and not-JSON bodies).
    assume(w.case.broker != "kafka" or body != b"")
    message_id = str(uuid7())
    pairs = [(b"id", message_id.encode()), (b"type", TEST_TYPE.encode())]
    pairs += [(k.encode(), v.encode()) for k, v in headers.items()]
    record = Hostile("generated", body, pairs)
    if w.case.broker == "kafka":
        kcat_produce(w.settings.kafka_bootstrap, w.case.route, b"k", [body], pairs)
    else:
        w.run(
            rabbit_foreign_send(
                w.settings.rabbitmq, w.settings.rabbitmq_management, w.case.route, record
            )
        )
    deadline = time.monotonic() + 30
    while (fate := w.run(w.fate(message_id))) == (0, 0) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling with a deadline: the fate is in another process
    assert fate in ((1, 0), (0, 1)), (fate, body[:80], headers)
    assert w.alive()
