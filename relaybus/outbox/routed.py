"""Publishing outbox messages to the brokers their type routes to (both relays)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Mapping
from datetime import datetime

from relaybus.brokers.publisher import Outcome, Publisher, PublishError
from relaybus.brokers.stalls import Stall
from relaybus.message import Message
from relaybus.outbox.metrics import RelayMetrics
from relaybus.outbox.routing import Router
from relaybus.tracing import Span, tracer

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1)  # naive, as the rows' UTC times are


async def best_effort(what: str, action: Awaitable[object]) -> None:
    """Clean-up whose failure must not stop the caller (shutdown, hand-back): logged
    with what it was, never raised."""
    try:
        await action
    except Exception as err:
        log.warning("relay: %s failed: %r", what, err)


class RoutedPublisher:
    """Sends messages to every broker their type routes to, starting each broker's
    publisher on first use.

    Order: within one ``publish`` call, messages reach each broker in list order
    (what the broker's ``Publisher`` guarantees for one call). A ``PublishError`` of
    a broker stops its publisher, so the next call reconnects from scratch.
    """

    def __init__(
        self, publishers: Mapping[str, Publisher], router: Router, metrics: RelayMetrics
    ) -> None:
        self.publishers = dict(publishers)
        self.router = router
        self.metrics = metrics
        self._started: set[str] = set()
        # Callers run concurrently; one lock so a broker's publisher starts only once
        # (two starts would leave two producers, and per-key order split across them).
        self._start_lock = asyncio.Lock()

    async def publish(self, messages: list[Message]) -> list[Outcome]:
        """Send each message to every broker its type routes to; combine the outcomes.

        A message is published when all its brokers acknowledged it; refused if any
        broker refused it (or no route matches); deferred otherwise. Raises
        ``PublishError`` when a broker cannot be reached (nothing is known acked).
        """
        traced = tracer()
        if not traced.enabled:
            return await self._publish(messages)
        spans: list[Span | None] = []
        sent = []
        for m in messages:
            span = traced.start_publish(m.type, m.traceparent)
            spans.append(span)
            if span is None:  # nine in ten at a 10 % ratio: sent with the row's context
                sent.append(m)
                continue
            if span.recording:
                self._describe(span, m)
            own = span.traceparent
            sent.append(m if own is None or own == m.traceparent else m.with_traceparent(own))
        try:
            outcomes = await self._publish(sent)
        except PublishError as err:
            for span in spans:
                if span is not None:
                    span.set("relaybus.outcome", "unreachable")
                    span.fail(err)
                    span.end()
            raise
        for span, outcome in zip(spans, outcomes, strict=True):
            if span is None or not span.recording:
                continue
            if outcome.error is not None:
                span.set("relaybus.outcome", "refused")
                span.fail(outcome.error)
            else:
                span.set("relaybus.outcome", "deferred" if outcome.deferred else "published")
            span.end()
        return outcomes

    def _describe(self, span: Span, message: Message) -> None:
        """A recording publish span's attributes, the row's wait in the outbox among them."""
        occurred = message.occurred_at
        # Rows store UTC without a zone: seconds since the epoch by subtraction (a
        # third of what ``replace(tzinfo=UTC).timestamp()`` costs).
        since_epoch = (
            (occurred - _EPOCH).total_seconds() if occurred.tzinfo is None else occurred.timestamp()
        )
        waited = max(0.0, time.time() - since_epoch)
        brokers = ",".join(self.router.brokers_for(message.type)) or "none"
        span.describe({
            "messaging.operation.type": "send",
            "messaging.system": brokers,
            "messaging.message.id": str(message.id),
            "relaybus.type": message.type,
            "relaybus.aggregate": f"{message.aggregatetype}/{message.aggregateid}"[:300],
            "relaybus.outbox.wait_ms": int(waited * 1_000_000) / 1000,  # to the µs
        })  # fmt: skip

    async def _publish(self, messages: list[Message]) -> list[Outcome]:
        routes = {self.router.brokers_for(t) for t in {m.type for m in messages}}
        if len(routes) == 1 and len(single := next(iter(routes))) == 1:
            # The common case: every message goes to the same one broker, outcomes as-is.
            return await self._publish_to(single[0], messages)
        errors: list[list[str]] = [[] for _ in messages]
        deferred = [False] * len(messages)
        per_broker: dict[str, list[int]] = {}
        for i, message in enumerate(messages):
            brokers = self.router.brokers_for(message.type)
            if not brokers:
                errors[i].append(f"no route matches type {message.type!r}")
            for broker in brokers:
                per_broker.setdefault(broker, []).append(i)
        for broker, indexes in per_broker.items():
            outcomes = await self._publish_to(broker, [messages[i] for i in indexes])
            for i, outcome in zip(indexes, outcomes, strict=True):
                if outcome.error is not None:
                    errors[i].append(f"{broker}: {outcome.error}")
                elif outcome.deferred:
                    deferred[i] = True
        return [
            Outcome(error="; ".join(e)) if e else Outcome(deferred=d)
            for e, d in zip(errors, deferred, strict=True)
        ]

    async def _publish_to(self, broker: str, messages: list[Message]) -> list[Outcome]:
        publisher = await self._publisher(broker)
        try:
            return await publisher.publish(messages)
        except PublishError:
            # Reconnect from scratch next time: a broken producer may hold stale state.
            async with self._start_lock:
                if broker in self._started:
                    self._started.discard(broker)
                    await best_effort(f"stopping the {broker} publisher", publisher.stop())
            raise

    async def _publisher(self, broker: str) -> Publisher:
        publisher = self.publishers.get(broker)
        if publisher is None:
            raise PublishError(f"no publisher configured for broker {broker!r}")
        async with self._start_lock:
            if broker not in self._started:
                await publisher.start()
                self._started.add(broker)
        return publisher

    def count(self, messages: list[Message], outcomes: list[Outcome]) -> None:
        """Add the outcomes to the relay metrics (published per broker, failures)."""
        published: Counter[str] = Counter()
        failed = 0
        for message, outcome in zip(messages, outcomes, strict=True):
            if outcome.ok:
                published.update(self.router.brokers_for(message.type))
            elif outcome.error is not None:
                failed += 1
        for broker, n in published.items():
            self.metrics.published.labels(broker).inc(n)
        if failed:
            self.metrics.failures.labels("permanent").inc(failed)

    def stalls(self) -> list[Stall]:
        """The stalled destinations of every started publisher, oldest first."""
        found = [s for broker in self._started for s in self.publishers[broker].stalls()]
        return sorted(found, key=lambda s: s.since)

    async def stop(self) -> None:
        """Stop every started publisher (failures logged, not raised)."""
        for broker in list(self._started):
            await best_effort(f"stopping the {broker} publisher", self.publishers[broker].stop())
        self._started.clear()
