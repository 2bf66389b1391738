"""Composition of one worker process: every handler of a ``ConsumerApp``, run together."""

from __future__ import annotations

import asyncio
import logging
from importlib.metadata import entry_points

from redis.asyncio import Redis

from relaybus.consumers.app import ConsumerApp, KafkaSource
from relaybus.consumers.kafka_worker import KafkaWorker
from relaybus.consumers.loading import TargetNotFound, load_target
from relaybus.consumers.metrics import WorkerMetrics
from relaybus.consumers.processor import Processor
from relaybus.consumers.rabbit_worker import RabbitWorker
from relaybus.consumers.subscriber import Subscriber
from relaybus.db import create_engine, session_factory
from relaybus.settings import Settings

log = logging.getLogger(__name__)

# Installed packages name their apps in this entry point group (``orders =
# "pkg.module:app"``); relaybus itself lists none.
ENTRY_POINTS = "relaybus.workers"


def registered_workers() -> dict[str, str]:
    """Short names of the workers installed packages register, to their targets."""
    return {point.name: point.value for point in entry_points(group=ENTRY_POINTS)}


class WorkerNotFound(TargetNotFound):
    """``relaybus worker NAME`` names nothing importable."""


def load_app(name: str) -> ConsumerApp:
    """The ``ConsumerApp`` for ``name``: ``module:attribute`` (an app, or a
    zero-argument function returning one) importable from the current directory, or a
    short name an installed package registers (``relaybus.workers`` entry points)."""
    known = {} if ":" in name else registered_workers()
    target = known.get(name, name)
    if ":" not in target:
        names = ", ".join(sorted(known)) or "none installed"
        raise WorkerNotFound(
            f"unknown worker {name!r}: give 'module:attribute' or a registered name ({names})"
        )
    try:
        app = load_target(target, (ConsumerApp,), "a ConsumerApp")
    except TargetNotFound as err:
        raise WorkerNotFound(str(err)) from None
    assert isinstance(app, ConsumerApp)
    return app


class Worker:
    """Runs each handler of ``app`` on its broker until ``stop`` is set.

    One engine and one Redis client are shared by the handlers that need them.
    ``metrics`` (optional) reports every handler's counters, latency and breaker.
    """

    def __init__(
        self, app: ConsumerApp, settings: Settings, metrics: WorkerMetrics | None = None
    ) -> None:
        self.app = app
        needs_db = any(hd.uses_sql for hd in app.handlers)
        needs_redis = any(hd.dedupe == "redis" for hd in app.handlers)
        # Clients only: nothing connects before run().
        # One connection per concurrently running SQL handler: a smaller pool makes
        # overflow connections that are opened and closed per message.
        pool = sum(hd.concurrency for hd in app.handlers if hd.uses_sql)
        self.engine = create_engine(settings.database_url, pool_size=pool + 2) if needs_db else None
        self.redis = Redis.from_url(settings.redis_url) if needs_redis else None
        sessions = session_factory(self.engine) if self.engine is not None else None
        self.runners: list[Subscriber] = []
        for handler in app.handlers:
            processor = Processor(handler, sessions, self.redis)
            if metrics is not None:
                metrics.watch(processor)
            if isinstance(handler.source, KafkaSource):
                self.runners.append(
                    KafkaWorker(
                        handler,
                        processor,
                        settings.kafka,
                        settings.kafka_session_timeout_ms,
                    )
                )
            else:
                self.runners.append(RabbitWorker(handler, processor, settings.rabbitmq))

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await asyncio.gather(*(r.run(stop) for r in self.runners))
        finally:
            for r in self.runners:
                log.info("%s stats: %s", r.handler.name, dict(r.processor.stats))
            if self.redis is not None:
                await self.redis.aclose()
            if self.engine is not None:
                await self.engine.dispose()

    async def ready(self) -> None:
        """Wait until every handler is consuming (partitions assigned / consumer set)."""
        await asyncio.gather(*(r.ready.wait() for r in self.runners))
