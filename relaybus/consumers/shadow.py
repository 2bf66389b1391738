"""Shadow replay: new handler code run against recorded traffic, invisibly.

Each recorded delivery goes through the same trust boundary as a live one (``decode``
with the handler's limits and types), then through the handler in a database
transaction that is **always rolled back**: the handler's writes, its outbox rows
(its outbound sends, counted here as *captured*) and its inbox row never commit. The
live inbox is not consulted before running (the live consumer applied these ids
already; the point is to run them again), and nothing is acknowledged, committed or
published anywhere.

Only SQL handlers are shadowed (their effects can be rolled back); a handler without
a session is reported as skipped. Outcomes are compared with what the live consumer
recorded: its inbox (applied) and, on Kafka, its dead-letter topic. A **regression**
is a message the live code applied that the new code dead-letters or fails.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import traceback
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ARRAY, bindparam, text
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from relaybus.consumers.app import ConsumerApp, Handler, KafkaSource, RabbitSource
from relaybus.consumers.incoming import InvalidMessage, decode, read_headers

log = logging.getLogger(__name__)

APPLIED, DEAD, FAILED = "applied", "dead-lettered", "failed"
EXCERPT_LINES = 6

# Outbox rows this transaction inserted: its xid is the rows' xmin (32-bit). Rows a
# handler writes inside a savepoint of its own carry the savepoint's xid: not counted.
_CAPTURED = text(
    "SELECT type, count(*) FROM outbox "
    "WHERE xmin::text = (txid_current() % 4294967296)::text GROUP BY type"
)
_LIVE_APPLIED = text(
    "SELECT message_id FROM inbox WHERE consumer = :consumer AND message_id = ANY(:ids)"
).bindparams(bindparam("ids", type_=ARRAY(UUID(as_uuid=True))))


@dataclass(frozen=True)
class Delivery:
    """One recorded delivery: the bytes and headers as the broker held them."""

    value: bytes | None
    headers: Sequence[tuple[Any, Any]]
    key: str
    source: str
    partition: int | None = None
    offset: int | None = None


@dataclass(frozen=True)
class Outcome:
    """What the new code did with one delivery."""

    handler: str
    message_id: uuid.UUID | None
    type: str
    outcome: str  # APPLIED, DEAD or FAILED
    reason: str = ""
    excerpt: str = ""
    captured: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Regression:
    """A message the live consumer applied that the new code did not."""

    handler: str
    message_id: uuid.UUID
    type: str
    shadow: str
    reason: str


@dataclass
class ShadowReport:
    """Per handler and type: outcome counts; dead-letter reasons; exception excerpts;
    outbound sends captured; and how the outcomes compare with the live records."""

    counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    reasons: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    excerpts: dict[tuple[str, str], str] = field(default_factory=dict)
    captured: Counter[tuple[str, str]] = field(default_factory=Counter)
    skipped: list[str] = field(default_factory=list)
    regressions: list[Regression] = field(default_factory=list)
    fixed: list[Outcome] = field(default_factory=list)  # live dead-lettered, now applied
    live_applied: int = 0
    live_dead: int = 0

    @property
    def failed(self) -> bool:
        return bool(self.regressions)

    def add(self, outcome: Outcome) -> None:
        self.counts[(outcome.handler, outcome.type, outcome.outcome)] += 1
        if outcome.reason:
            self.reasons[(outcome.handler, outcome.type, outcome.reason)] += 1
        if outcome.excerpt:
            self.excerpts.setdefault((outcome.handler, outcome.reason), outcome.excerpt)
        for type_, count in outcome.captured.items():
            self.captured[(outcome.handler, type_)] += count

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcomes": [
                {"handler": h, "type": t, "outcome": o, "count": n}
                for (h, t, o), n in sorted(self.counts.items())
            ],
            "reasons": [
                {"handler": h, "type": t, "reason": r, "count": n}
                for (h, t, r), n in sorted(self.reasons.items())
            ],
            "exceptions": [
                {"handler": h, "error": r, "excerpt": e}
                for (h, r), e in sorted(self.excerpts.items())
            ],
            "captured_sends": [
                {"handler": h, "type": t, "count": n} for (h, t), n in sorted(self.captured.items())
            ],
            "skipped": self.skipped,
            "live": {"applied": self.live_applied, "dead_lettered": self.live_dead},
            "regressions": [
                {
                    "handler": r.handler,
                    "id": str(r.message_id),
                    "type": r.type,
                    "shadow": r.shadow,
                    "reason": r.reason,
                }
                for r in self.regressions
            ],
            "fixed": [str(o.message_id) for o in self.fixed],
        }


def amqp_matches(pattern: str, routing_key: str) -> bool:
    """RabbitMQ topic-exchange matching: ``*`` one word, ``#`` zero or more."""
    words, keys = pattern.split("."), routing_key.split(".")

    @functools.cache
    def match(i: int, j: int) -> bool:
        if i == len(words):
            return j == len(keys)
        if words[i] == "#":
            return match(i + 1, j) or (j < len(keys) and match(i, j + 1))
        return j < len(keys) and words[i] in ("*", keys[j]) and match(i + 1, j + 1)

    return match(0, 0)


def kafka_handlers(app: ConsumerApp, topic: str) -> list[Handler]:
    """``app``'s handlers that read Kafka ``topic``."""
    return [
        h for h in app.handlers if isinstance(h.source, KafkaSource) and h.source.topic == topic
    ]


def rabbit_handlers(app: ConsumerApp) -> list[Handler]:
    """``app``'s RabbitMQ handlers (each gets the archived messages its binding matches)."""
    return [h for h in app.handlers if isinstance(h.source, RabbitSource)]


class ShadowRunner:
    """Runs deliveries through handlers in always-rolled-back transactions."""

    def __init__(self, engine: AsyncEngine, handlers: Iterable[Handler]) -> None:
        self.engine = engine
        self.handlers = list(handlers)
        self.report = ShadowReport()
        self.outcomes: list[Outcome] = []
        for handler in self.handlers:
            if not handler.uses_sql:
                self.report.skipped.append(
                    f"{handler.name}: not a SQL handler (its effects cannot be rolled back)"
                )
        self.handlers = [h for h in self.handlers if h.uses_sql]

    async def run(self, delivery: Delivery, routing_key: str | None = None) -> None:
        """Every selected handler on ``delivery`` (RabbitMQ: those whose binding
        matches ``routing_key``)."""
        for handler in self.handlers:
            source = handler.source
            if isinstance(source, RabbitSource) and (
                routing_key is None or not amqp_matches(source.binding, routing_key)
            ):
                continue
            outcome = await self._one(handler, delivery)
            self.outcomes.append(outcome)
            self.report.add(outcome)

    async def _one(self, handler: Handler, delivery: Delivery) -> Outcome:
        try:
            headers = read_headers(delivery.headers, handler.limits)
        except InvalidMessage as err:
            return Outcome(handler.name, None, "?", DEAD, err.reason)
        type_ = headers.get("type", "?")[:255]
        try:
            message = decode(
                delivery.value or b"",
                headers,
                key=delivery.key,
                source=delivery.source,
                partition=delivery.partition,
                offset=delivery.offset,
                accepted_types=handler.types,
                max_bytes=handler.max_bytes,
                require_object=handler.require_object,
            )
        except InvalidMessage as err:
            return Outcome(handler.name, _id(headers), type_, DEAD, err.reason)
        async with self.engine.connect() as conn:
            transaction = await conn.begin()
            # The session joins this transaction for rollbacks only: a handler's own
            # commit is not passed on, and the transaction is rolled back whatever the
            # handler does. (No savepoint: rows keep the transaction's id as their
            # xmin, which is how its outbox rows are counted.)
            session = AsyncSession(bind=conn, join_transaction_mode="rollback_only")
            try:
                async with asyncio.timeout(handler.timeout):
                    await handler.func(message, session)
                await session.flush()
                captured = {row[0]: int(row[1]) for row in await session.execute(_CAPTURED)}
                return Outcome(handler.name, message.id, message.type, APPLIED, captured=captured)
            except InvalidMessage as err:
                return Outcome(handler.name, message.id, message.type, DEAD, err.reason)
            except Exception as err:  # the new code's failure: reported, never raised
                lines = traceback.format_exception(err)
                excerpt = "".join(lines[-EXCERPT_LINES:])[-2000:]
                reason = f"{type(err).__name__}: {str(err)[:200]}"
                return Outcome(handler.name, message.id, message.type, FAILED, reason, excerpt)
            finally:
                await session.close()
                await transaction.rollback()

    async def compare_with_live(self, live_dead: Mapping[str, set[uuid.UUID]]) -> None:
        """Compare the outcomes since the last call with the live records: the live
        inbox's rows for these ids (read only) and ``live_dead`` (handler name -> ids
        its dead-letter queue holds); then forget them. Called after each batch, so a
        window of any size holds one batch of outcomes (plus its regressions)."""
        by_handler: dict[str, list[Outcome]] = {}
        compared, self.outcomes = self.outcomes, []
        for outcome in compared:
            if outcome.message_id is not None:
                by_handler.setdefault(outcome.handler, []).append(outcome)
        async with self.engine.connect() as conn:
            for name, outcomes in by_handler.items():
                ids = list({o.message_id for o in outcomes if o.message_id is not None})
                applied = {
                    row[0]
                    for row in await conn.execute(_LIVE_APPLIED, {"consumer": name, "ids": ids})
                }
                dead = live_dead.get(name, set())
                self.report.live_applied += len(applied)
                self.report.live_dead += len(dead & set(ids))
                for outcome in outcomes:
                    assert outcome.message_id is not None
                    if outcome.message_id in applied and outcome.outcome != APPLIED:
                        self.report.regressions.append(
                            Regression(
                                name,
                                outcome.message_id,
                                outcome.type,
                                outcome.outcome,
                                outcome.reason,
                            )
                        )
                    elif outcome.message_id in dead and outcome.outcome == APPLIED:
                        self.report.fixed.append(outcome)
            await conn.rollback()


def _id(headers: Mapping[str, str]) -> uuid.UUID | None:
    try:
        return uuid.UUID(headers.get("id", "")[:64])
    except ValueError:
        return None
