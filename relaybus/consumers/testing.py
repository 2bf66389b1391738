"""``TestBroker``: a ``ConsumerApp``'s handlers on the in-memory broker, for unit tests
of handlers without Kafka or RabbitMQ (FastStream's ``TestBroker``, relaybus's way).

The handlers run in the worker's own consume loop (``kafka_worker``) over
``InMemoryBroker``: the same decoding at the trust boundary, the same retry policy
and dead letters with their reason, the same commit-after-verdict. A ``RabbitSource``
handler reads its queue, bound with its binding, as an in-memory topic.

    async with TestBroker(app) as broker:
        await broker.publish(Message.from_data("user.registered", "user", "7", {"id": 7}))
        await broker.idle()
        assert broker.dead_letters("outbox.event.user") == []

Handlers with the inbox (SQL) need ``sessions`` (a real database: the inbox is the
promise); ``dedupe="redis"`` needs ``redis``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from types import TracebackType
from typing import Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaybus.consumers.app import ConsumerApp, Handler, KafkaSource, RabbitSource
from relaybus.consumers.kafka_worker import KafkaWorker
from relaybus.consumers.memory_broker import InMemoryBroker
from relaybus.consumers.naming import dlq_name
from relaybus.consumers.processor import Processor
from relaybus.message import Message


@dataclasses.dataclass(frozen=True)
class Letter:
    """A dead letter as a test reads it: headers as text, the body as bytes."""

    headers: dict[str, str]
    body: bytes

    @property
    def reason(self) -> str | None:
        return self.headers.get("x-dlq-reason")

    def json(self) -> Any:
        return json.loads(self.body)


class TestBroker:
    """Runs every handler of ``app`` on an ``InMemoryBroker`` while in its ``async with``."""

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(
        self,
        app: ConsumerApp,
        *,
        sessions: async_sessionmaker[AsyncSession] | None = None,
        redis: Redis | None = None,
        broker: InMemoryBroker | None = None,
    ) -> None:
        self.app = app
        self.broker = broker or InMemoryBroker()
        self.workers: list[KafkaWorker] = []
        for handler in app.handlers:
            self.workers.append(
                KafkaWorker(
                    self._on_memory(handler),
                    Processor(handler, sessions, redis),
                    None,
                    transport=self.broker,
                )
            )
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def _on_memory(self, handler: Handler) -> Handler:
        if isinstance(handler.source, RabbitSource):
            queue = handler.source.queue
            self.broker.bind(queue, handler.source.binding)
            return dataclasses.replace(handler, source=KafkaSource(queue, queue))
        return handler

    async def __aenter__(self) -> TestBroker:
        self._tasks = [asyncio.create_task(w.run(self._stop)) for w in self.workers]
        await asyncio.gather(*(w.ready.wait() for w in self.workers))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def publish(self, *messages: Message) -> None:
        """Publish as the relay would (Kafka topic by aggregate type, bound queues)."""
        await self.broker.publish(list(messages))

    async def idle(self, timeout: float = 30.0) -> None:
        """Wait until every handler has settled everything published so far."""
        await self.broker.idle(timeout)

    def stats(self, handler: str) -> dict[str, int]:
        """The handler's outcome counts (``done``, ``duplicate``, ``retried``, …)."""
        for worker in self.workers:
            if worker.handler.name == handler:
                return dict(worker.processor.stats)
        raise KeyError(handler)

    def dead_letters(self, source: str) -> list[Letter]:
        """The dead letters of ``source`` (a topic or a queue), in order."""
        return [
            Letter({k: v.decode("utf-8", "replace") for k, v in r.headers}, r.value or b"")
            for r in self.broker.records(dlq_name(source))
        ]
