"""Composition of one worker process: every handler of a ``ConsumerApp``, run together."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sys

from redis.asyncio import Redis

from consumers.app import ConsumerApp, KafkaSource
from consumers.kafka_worker import KafkaWorker
from consumers.metrics import WorkerMetrics
from consumers.processor import Processor
from consumers.rabbit_worker import RabbitWorker
from relaybus.db import create_engine, session_factory
from relaybus.settings import Settings

log = logging.getLogger(__name__)

# Workers known by a short name; anything else is given as ``module:attribute``.
BUILTIN: dict[str, str] = {
    "orders": "producers.orders.worker:orders_app",
    "inventory": "producers.inventory.worker:inventory_app",
    "payments": "producers.payments.worker:payments_app",
}


class WorkerNotFound(LookupError):
    """``relaybus worker NAME`` names nothing importable."""


def load_app(name: str) -> ConsumerApp:
    """The ``ConsumerApp`` for ``name``: a built-in name or ``module:attribute`` (an app,
    or a zero-argument function returning one), importable from the current directory."""
    target = BUILTIN.get(name, name)
    if ":" not in target:
        known = ", ".join(sorted(BUILTIN)) or "none yet"
        raise WorkerNotFound(
            f"unknown worker {name!r}: use a built-in name ({known}) or 'module:attribute'"
        )
    module_name, _, attr = target.partition(":")
    # Like uvicorn: apps in the current directory are importable without installing.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise WorkerNotFound(f"cannot import {module_name!r}: {err}") from None
    obj = getattr(module, attr, None)
    if callable(obj) and not isinstance(obj, ConsumerApp):
        obj = obj()
    if not isinstance(obj, ConsumerApp):
        raise WorkerNotFound(f"{target!r} is not a ConsumerApp (or a function returning one)")
    return obj


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
        self.runners: list[KafkaWorker | RabbitWorker] = []
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
