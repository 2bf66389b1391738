"""The broker-neutral part of consuming: dedupe, handler, timeout, breaker, verdict."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

from redis.asyncio import Redis
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaybus.backoff import Backoff
from relaybus.consumers.app import Handler
from relaybus.consumers.breaker import BreakerState
from relaybus.consumers.failure import DONE, DUPLICATE, Outcome, Verdict
from relaybus.consumers.inbox import Inbox
from relaybus.consumers.incoming import Incoming, InvalidMessage
from relaybus.consumers.redis_dedupe import Claim, RedisDedupe
from relaybus.db.errors import database_unavailable
from relaybus.tracing import Span, Tracer, tracer

log = logging.getLogger(__name__)

# While the worker's own database is unreachable an attempt waits this long (doubling,
# jittered) before it tries again; attempts are not used up meanwhile.
DB_WAIT_INITIAL = 0.2
DB_WAIT_MAX = 5.0


class Processor:
    """Runs one handler on one delivery and decides its fate (a ``Verdict``); never
    raises for a handler failure. ``stats`` counts every outcome."""

    def __init__(
        self,
        handler: Handler,
        sessions: async_sessionmaker[AsyncSession] | None = None,
        redis: Redis | None = None,
    ) -> None:
        if handler.uses_sql and sessions is None:
            raise ValueError(f"handler {handler.name!r}: SQL handlers need a database")
        if handler.dedupe == "redis" and redis is None:
            raise ValueError(f"handler {handler.name!r}: redis dedupe needs redis")
        self.handler = handler
        self.sessions = sessions
        self.inbox = Inbox()
        # A claim outlives its handler by a margin: the handler is cancelled at its
        # timeout, so an older claim belongs to a worker that died.
        self.redis_dedupe = (
            RedisDedupe(redis, claim_ttl=handler.timeout + 5.0) if redis is not None else None
        )
        self.stats: Counter[str] = Counter()
        # Set by WorkerMetrics: told each handler run's duration (seconds).
        self.observe: Callable[[float], None] | None = None

    async def process(self, message: Incoming) -> Verdict:
        """Apply ``message`` once and return its verdict; never raises for a handler
        failure.

        Tracing (when on): one ``process`` span per delivery, a child of the context
        the delivery carries and linked to it (a new trace when it carries none or a
        malformed one), current while the handler runs (so what it writes to its
        outbox joins the trace), with the inbox outcome, attempt, dead-letter reason
        and breaker state.

        Waits while the worker's own database is unreachable (a refused or broken
        connection, a server restarting): the attempt is tried again in place with
        backoff, without using up an attempt, since the message is not at fault.
        Waits while the breaker is open. A failure that opens the breaker (or meets
        it open) is retried in place after the pause, without using up an attempt:
        the dependency, not the message, is presumed at fault. A failure of the
        half-open probe does use up an attempt, so a message that fails
        deterministically still reaches the dead-letter queue after
        ``max_attempts`` probes instead of holding the handler forever.
        """
        traced = tracer()
        if not traced.enabled:
            return await self._process(message)
        span = self._start(traced, message)
        try:
            with traced.activate(span):
                verdict = await self._process(message)
            settle_span(span, verdict)
            if self.handler.breaker is not None and span.recording:
                span.set("relaybus.breaker", str(self.handler.breaker.state))
            return verdict
        except BaseException as err:  # cancelled: recorded, then on its way
            span.fail(err)
            raise
        finally:
            span.end()

    def _start(self, traced: Tracer, message: Incoming) -> Span:
        span = traced.start_delivery(message.source, message.headers)
        if span.recording:  # nine in ten deliveries at a 10 % ratio skip the call
            describe_delivery(span, message, self.handler.name)
        return span

    async def _process(self, message: Incoming) -> Verdict:
        handler = self.handler
        waiting_for_db = Backoff(DB_WAIT_INITIAL, DB_WAIT_MAX)
        while True:
            probing = False
            stage = _Stage()
            if handler.breaker is not None:
                await handler.breaker.wait_ready()
                probing = handler.breaker.state is BreakerState.HALF_OPEN
            began = time.perf_counter()
            try:
                async with asyncio.timeout(handler.timeout):
                    applied = await self._apply(message, stage)
            except InvalidMessage as err:
                self.stats["dead"] += 1
                return Verdict(Outcome.DEAD, reason=err.reason, error=err)
            except Exception as err:  # the handler's failure, whatever it is
                if self._database_unavailable(err, stage):
                    # Our own database, not the message: wait for it without using
                    # up an attempt; the delivery stays unacknowledged in the broker
                    # meanwhile (degradation by queueing, not dead letters).
                    self.stats["db-unavailable"] += 1
                    delay = waiting_for_db.next_delay()
                    log.warning(
                        "%s: database unavailable (%r); %s again in %.1fs",
                        handler.name,
                        err,
                        message.id,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    continue
                self.stats["failed"] += 1
                if handler.breaker is not None:
                    handler.breaker.failure()
                    if not probing and handler.breaker.state is not BreakerState.CLOSED:
                        self.stats["paused"] += 1
                        log.warning("%s: breaker open: %r", handler.name, err)
                        continue
                if handler.retry.exhausted(message.attempt):
                    self.stats["dead"] += 1
                    return Verdict(Outcome.DEAD, reason="max-attempts", error=err)
                self.stats["retried"] += 1
                return Verdict(Outcome.RETRY, error=err, delay=handler.retry.delay(message.attempt))
            finally:
                if self.observe is not None:
                    self.observe(time.perf_counter() - began)
            if handler.breaker is not None:
                handler.breaker.success()
            self.stats["done" if applied else "duplicate"] += 1
            if not applied:
                log.info("%s: duplicate %s skipped", handler.name, message.id)
            return DONE if applied else DUPLICATE

    async def process_together(self, messages: list[Incoming]) -> bool:
        """Apply ``messages`` (SQL handler) in one transaction with one inbox statement.

        True if it committed: each message was applied or skipped as a duplicate. False
        if anything failed: the transaction rolled back, nothing was applied, and the
        caller runs them one by one with ``process``. Never waits on an open breaker.
        """
        handler = self.handler
        assert self.sessions is not None
        if handler.breaker is not None and handler.breaker.state != "closed":
            return False
        applied = 0
        began = time.perf_counter()
        traced = tracer()
        outcomes: list[Verdict] = []
        # Recording spans and the index of their outcome: an unsampled delivery's span
        # is dropped as soon as its handler returns (kept for the whole transaction,
        # nine in ten would outlive collections for nothing).
        recorded: list[tuple[Span, int]] = []
        try:
            async with self.sessions() as session, session.begin():
                fresh = {m.id for m in messages}
                if handler.dedupe == "inbox":
                    fresh = await self.inbox.claim_many(session, handler.name, list(fresh))
                for message in messages:
                    if message.id not in fresh:
                        if traced.enabled and (span := self._start(traced, message)).recording:
                            recorded.append((span, len(outcomes)))
                        outcomes.append(DUPLICATE)
                        continue
                    fresh.discard(message.id)  # a repeated id in the batch is a duplicate
                    if traced.enabled:
                        span = self._start(traced, message)
                        if span.recording:
                            recorded.append((span, len(outcomes)))
                        with traced.activate(span):
                            async with asyncio.timeout(handler.timeout):
                                await handler.func(message, session)
                    else:
                        async with asyncio.timeout(handler.timeout):
                            await handler.func(message, session)
                    outcomes.append(DONE)
                    applied += 1
        except Exception as err:
            for span, _ in recorded:
                # Tried again one by one (each its own span): this attempt is history.
                span.set("relaybus.outcome", "rolled-back")
                span.set("relaybus.error", type(err).__name__)
                span.end()
            log.info(
                "%s: shared transaction of %d rolled back: %r", handler.name, len(messages), err
            )
            return False
        for span, at in recorded:
            settle_span(span, outcomes[at])
            span.end()
        if self.observe is not None:
            elapsed = time.perf_counter() - began
            for _ in messages:
                self.observe(elapsed)
        if handler.breaker is not None:
            handler.breaker.success()
        self.stats["done"] += applied
        self.stats["duplicate"] += len(messages) - applied
        self.stats["batches"] += 1
        return True

    def _database_unavailable(self, err: Exception, stage: _Stage) -> bool:
        """The worker's database is unreachable: a driver error saying so anywhere,
        or a connection error outside the handler's own code (a handler's
        ``ConnectionError`` is its dependency's, handled by its retry and breaker)."""
        if self.sessions is None:
            return False
        if isinstance(err, DBAPIError) or hasattr(err, "sqlstate"):
            return database_unavailable(err)  # the driver's word, wherever it came from
        return not stage.in_handler and database_unavailable(err)

    async def _apply(self, message: Incoming, stage: _Stage | None = None) -> bool:
        """Run the handler under the handler's dedupe; False if it was a duplicate."""
        stage = stage or _Stage()
        handler = self.handler
        if handler.dedupe == "redis":
            assert self.redis_dedupe is not None
            # A live claim is another delivery of this id in progress (or one whose
            # worker died mid-handler): wait for it to finish or expire, then look
            # again. Never a duplicate until it is marked done.
            while (claim := await self.redis_dedupe.claim(handler.name, message.id)) is Claim.BUSY:
                self.stats["claim-wait"] += 1
                await self.redis_dedupe.wait_released(handler.name, message.id)
            if claim is Claim.DONE:
                return False
            try:
                await self._run(message, stage)
            except BaseException:
                await self.redis_dedupe.release(handler.name, message.id)
                raise
            await self.redis_dedupe.done(handler.name, message.id)
            return True
        if handler.dedupe == "inbox":
            assert self.sessions is not None
            async with self.sessions() as session, session.begin():
                if not await self.inbox.claim(session, handler.name, message.id):
                    return False
                async with stage.handler():
                    await handler.func(message, session)
            return True
        await self._run(message, stage)
        return True

    async def _run(self, message: Incoming, stage: _Stage) -> None:
        """The handler alone, in its own transaction if it is a SQL handler."""
        if not self.handler.uses_sql:
            async with stage.handler():
                await self.handler.func(message, None)
            return
        assert self.sessions is not None
        async with self.sessions() as session, session.begin(), stage.handler():
            await self.handler.func(message, session)


def describe_delivery(span: Span, message: Incoming, handler: str) -> None:
    """A delivery's span attributes (messaging semantic conventions, relaybus's own),
    when the span records."""
    if not span.recording:
        return
    attributes: dict[str, str | int] = {
        "messaging.operation.type": "process",
        "messaging.destination.name": message.source[:255],
        "messaging.message.id": str(message.id),
        "relaybus.handler": handler,
        "relaybus.type": message.type[:255],
        "relaybus.attempt": message.attempt,
    }
    if message.partition is not None:
        attributes["messaging.destination.partition.id"] = str(message.partition)
    if message.offset is not None:
        attributes["messaging.kafka.offset"] = message.offset
    span.describe(attributes)


def settle_span(span: Span, verdict: Verdict) -> None:
    """Record a verdict on a delivery's span: the inbox outcome (``applied``,
    ``duplicate``), or the retry / dead-letter decision and its error."""
    if not span.recording:
        return
    outcome = {Outcome.DONE: "applied", Outcome.DUPLICATE: "duplicate"}.get(
        verdict.outcome, str(verdict.outcome)
    )
    span.set("relaybus.outcome", outcome)
    if verdict.reason:
        span.set("relaybus.dlq.reason", verdict.reason)
    if verdict.outcome is Outcome.RETRY:
        span.set("relaybus.retry.delay_s", verdict.delay)
    if verdict.error is not None:
        span.fail(verdict.error)


class _Stage:
    """Where one attempt is: in the handler's own code, or in the worker's (session,
    inbox, commit). Per attempt, since attempts run concurrently."""

    def __init__(self) -> None:
        self.in_handler = False

    @contextlib.asynccontextmanager
    async def handler(self) -> AsyncIterator[None]:
        # Left set when the handler raises: the error is the handler's.
        self.in_handler = True
        yield
        self.in_handler = False
