"""The outbox writer: adds an event to the caller's SQL transaction."""

from __future__ import annotations

import json
import re
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pydantic import BaseModel
from sqlalchemy import CTE, Delete, Insert, Result, TextClause, Update, text
from sqlalchemy.ext.asyncio import AsyncSession

from relaybus import headers as rh
from relaybus.events import spec_of
from relaybus.ids import uuid7
from relaybus.outbox.notify import CHANNEL
from relaybus.settings import Settings
from relaybus.tracing import NULL_SPAN, Span, Tracer, tracer

# pg_advisory_xact_lock(class, key): the class keeps our keys apart from other users'.
KEY_LOCK_CLASS = 0x5242  # "RB"


def event_sql(with_headers: bool) -> str:
    """The outbox INSERT: one event row, its key lock and, if a relay waits, a NOTIFY.

    - ``pg_advisory_xact_lock`` per key: rows of one key get their ``sequence`` in
      commit order (a second writer of the key waits for the first to finish).
    - ``rb_wake`` sends NOTIFY only while some relay has registered as idle in
      ``outbox_waiters``: a NOTIFY takes a cluster-wide lock at commit that busy
      writers should not pay for. Its payload is the row's partition, so the relay
      wakes only that partition's drainer (waking all of them made every commit
      cost one fetch per leased partition). It lives in the statement rather than in a
      trigger because a trigger costs every insert about twice as much (measured).
    - ``timestamp`` is left to its server default (the transaction's start, UTC),
      and so are ``headers`` (``{}``) when the event has none.
    - JSON travels as ``text`` and is cast by the server: a ``jsonb`` parameter
      would go through the driver's Python-level codec instead.

    Plain SQL rather than a Core construct on purpose: SQLAlchemy hashes a
    statement's cache key on every execution, and this one's Core tree made that
    key ten times the size of a typical INSERT's.
    """
    headers_column, headers_value = (
        (", headers", ", CAST(CAST(:rb_headers AS text) AS jsonb)") if with_headers else ("", "")
    )
    return (
        "WITH rb_key_lock AS ("
        f"SELECT pg_advisory_xact_lock({KEY_LOCK_CLASS}, hashtext(:rb_aggregateid))), "
        f"rb_wake AS (SELECT pg_notify('{CHANNEL}', "
        "CAST(CAST(:rb_partition AS smallint) AS text)) WHERE EXISTS "
        "(SELECT FROM outbox_waiters WHERE expires_at > now())) "
        "INSERT INTO outbox "
        f"(id, aggregatetype, aggregateid, type, payload{headers_column}, partition) "
        "SELECT :rb_id, :rb_aggregatetype, :rb_aggregateid, :rb_type, "
        f"CAST(CAST(:rb_payload AS text) AS jsonb){headers_value}, :rb_partition "
        "FROM rb_key_lock LEFT JOIN rb_wake ON true"
    )


BusinessStatement = Insert | Update | Delete

_DELETE_WRITTEN = text("DELETE FROM outbox WHERE id = :rb_id")

# One encoder for every payload: ``json.dumps`` with options builds a new one per call.
_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@dataclass(frozen=True, slots=True)
class _Encoded:
    """A body already serialised (an event instance's ``model_dump_json``)."""

    text: str


class OutboxError(ValueError):
    """The event was refused before anything was written (bad payload, names, size)."""


# Kafka topic names: legal characters and length (the relay's default topic is
# ``outbox.event.<aggregatetype>``). AMQP short strings (type, routing key, header
# names) are at most 255 *bytes*.
_TOPIC_CHARS = re.compile(r"[A-Za-z0-9._-]+")
TOPIC_PREFIX = "outbox.event."
MAX_TOPIC = 249
MAX_SHORTSTR_BYTES = 255
MAX_HEADER_BYTES = 16 * 1024


def name_problem(aggregate_type: str, aggregate_id: str, type: str) -> str | None:
    """What is wrong with an event's names, or None. Checked before writing so the
    relay never meets a row it cannot encode: every name 1..255 characters (the
    columns); ``aggregate_type`` also legal in a Kafka topic name; ``type`` at most 255
    UTF-8 bytes (the AMQP type and routing key)."""
    if not isinstance(aggregate_type, str) or not isinstance(type, str):
        return _text_problem("aggregate_type", aggregate_type) or _text_problem("type", type)
    return _text_problem("aggregate_id", aggregate_id) or type_names_problem(aggregate_type, type)


@lru_cache(maxsize=1024)
def type_names_problem(aggregate_type: str, type: str) -> str | None:
    """``name_problem`` for the two names that repeat (few distinct values in a
    process): checked once per pair, by the writer and the relay alike."""
    problem = _text_problem("aggregate_type", aggregate_type) or _text_problem("type", type)
    if problem is not None:
        return problem
    if not _TOPIC_CHARS.fullmatch(aggregate_type) or aggregate_type in (".", ".."):
        return (
            f"aggregate_type {aggregate_type!r:.80} names a Kafka topic "
            f"('{TOPIC_PREFIX}<aggregate_type>'): use only A-Z a-z 0-9 . _ -"
        )
    if len(TOPIC_PREFIX) + len(aggregate_type) > MAX_TOPIC:
        return f"aggregate_type makes a topic name over {MAX_TOPIC} characters"
    if len(type.encode()) > MAX_SHORTSTR_BYTES:
        return f"type is {len(type.encode())} UTF-8 bytes; AMQP allows {MAX_SHORTSTR_BYTES}"
    return None


def _text_problem(field: str, value: object) -> str | None:
    if not isinstance(value, str) or not value or len(value) > 255:
        return f"{field} must be 1..255 characters, got {value!r:.80}"
    if "\x00" in value:
        return f"{field} must not contain NUL characters"
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            return f"{field} is not valid Unicode (a lone surrogate)"
    return None


def headers_problem(headers: Mapping[str, str]) -> str | None:
    """What is wrong with user headers, or None: text only, no reserved or envelope
    names (relaybus writes those; ``schema_version`` may be set), AMQP-sized names,
    at most 16 KiB in all."""
    size = 0
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            return "headers must map strings to strings"
        if not name or len(name.encode("utf-8", "surrogatepass")) > MAX_SHORTSTR_BYTES:
            return f"header name {name!r:.80} must be 1..255 UTF-8 bytes"
        if rh.is_reserved(name):
            return f"header {name!r} is in relaybus's reserved x- namespace"
        if name in rh.ENVELOPE and name != "schema_version":
            return f"header {name!r} is set by relaybus itself"
        if "\x00" in value or "\x00" in name:
            return f"header {name!r} contains a NUL character"
        try:
            size += len(name.encode()) + len(value.encode())
        except UnicodeEncodeError:
            return f"header {name!r} is not valid Unicode (a lone surrogate)"
    if size > MAX_HEADER_BYTES:
        return f"headers are {size} bytes; at most {MAX_HEADER_BYTES}"
    return None


def partition_for(aggregate_id: str, partitions: int) -> int:
    """The relay partition of a key: CRC-32 of its UTF-8 bytes modulo ``partitions``.

    Stable across processes and Python versions (unlike ``hash()``).
    """
    return zlib.crc32(aggregate_id.encode()) % partitions


Described = tuple[str, str, str, Any, Mapping[str, str] | None]


def _write_span(
    traced: Tracer, described: Described, id: uuid.UUID | None
) -> tuple[Span, Described, uuid.UUID]:
    """The span of one outbox write (a child of the caller's current span, or of the
    ``traceparent`` the caller put in ``headers``) and the event with that span's
    context stored in its row's ``headers``: the trace starts at the write, and every
    relay (polling, WAL, Debezium: the column travels as a header) continues it."""
    aggregate_type, aggregate_id, type_, body, headers = described
    message_id = id or uuid7()
    given = headers.get("traceparent") if headers else None
    span = traced.start(
        f"create {type_}",
        kind="producer",
        parent={"traceparent": given} if given else None,
    )
    if span.recording:
        span.describe({
            "messaging.operation.type": "create",
            "messaging.message.id": str(message_id),
            "db.system.name": "postgresql",
            "db.operation.name": "INSERT",
            "db.collection.name": "outbox",
            "relaybus.type": type_,
            "relaybus.aggregate": f"{aggregate_type}/{aggregate_id}"[:300],
        })  # fmt: skip
    stored = span.traceparent
    if stored is not None:
        headers = {**(headers or {}), "traceparent": stored}
    return span, (aggregate_type, aggregate_id, type_, body, headers), message_id


def describe(
    event: BaseModel | None,
    aggregate_type: str | None,
    aggregate_id: str | None,
    type: str | None,
    payload: Any,
    headers: Mapping[str, str] | None,
) -> Described:
    """An event's ``(aggregate_type, aggregate_id, type, body, headers)``: from an
    ``@event`` instance (its body serialised once, as ``_Encoded``; its declared type,
    aggregate and version) or from the arguments. ``OutboxError`` if they contradict
    each other or something is missing. A version above 1 adds the ``schema_version``
    header; version 1 writes none (no header means version 1, and the statement
    without headers is the cheaper one)."""
    if event is None:
        if aggregate_type is None or aggregate_id is None or type is None:
            raise OutboxError(
                "give an event instance, or aggregate_type, aggregate_id, type and payload"
            )
        return aggregate_type, aggregate_id, type, payload, headers
    try:
        spec = spec_of(event)
    except TypeError as err:
        raise OutboxError(str(err)) from None
    if type is not None and type != spec.type:
        raise OutboxError(f"type {type!r} contradicts the event's {spec.type!r}")
    if payload is not None:
        raise OutboxError("an event instance is its own payload: give one or the other")
    aggregate_type = aggregate_type or spec.aggregate_type
    if aggregate_type is None:
        raise OutboxError(f"{spec.type}: no aggregate_type (declare it with @event or pass it)")
    if aggregate_id is None:
        if spec.key is None:
            raise OutboxError(f"{spec.type}: no aggregate_id (declare key= or pass it)")
        aggregate_id = str(getattr(event, spec.key))
    body = _Encoded(event.model_dump_json())
    if spec.version == 1:
        return aggregate_type, aggregate_id, spec.type, body, headers
    version = str(spec.version)
    if headers and headers.get("schema_version", version) != version:
        raise OutboxError(f"schema_version header contradicts the event's v{version}")
    return (
        aggregate_type,
        aggregate_id,
        spec.type,
        body,
        {**(headers or {}), "schema_version": version},
    )


class Outbox:
    """Writes outbox rows inside the caller's ``AsyncSession`` transaction.

    ``Outbox.from_settings(settings)`` is how a process builds its writer.

    ``enqueue`` neither commits nor flushes anything else: the row commits or rolls
    back with the caller's business writes. Rows of one ``aggregate_id`` are
    serialised by a transaction-scoped advisory lock, so their ``sequence`` order is
    their commit order and the relay publishes them in that order.
    """

    def __init__(
        self,
        partitions: int = 16,
        max_payload_bytes: int = 1_048_576,
        *,
        delete_on_write: bool = False,
    ) -> None:
        self.partitions = partitions
        self.max_payload_bytes = max_payload_bytes
        # WAL-only mode (docs/cdc.md): the row is deleted in the transaction that
        # inserts it. The WAL keeps the insert for the WAL relay or Debezium; the
        # table stays empty, so the polling relay and the operator tools see nothing.
        self.delete_on_write = delete_on_write
        # Indexed by "has headers": without any, the column keeps its default.
        self._event_inserts: tuple[TextClause, TextClause] = (
            text(event_sql(with_headers=False)),
            text(event_sql(with_headers=True)),
        )
        self._event_ctes: tuple[CTE, CTE] = (
            self._event_inserts[0].columns().cte("rb_outbox_event"),
            self._event_inserts[1].columns().cte("rb_outbox_event"),
        )
        # Business statement -> combined statements (without, with headers). Reusing
        # one combined object lets SQLAlchemy memoize its cache key (computing it
        # walks the whole tree).
        self._combined: dict[BusinessStatement, tuple[BusinessStatement, BusinessStatement]] = {}

    def encode_payload(self, payload: Any) -> str:
        """``payload`` as JSON text; raises ``OutboxError`` if not JSON or over the cap."""
        try:
            body = _JSON.encode(payload)
        except (TypeError, ValueError) as err:
            raise OutboxError(f"payload is not JSON-serialisable: {err}") from err
        return self.check_size(body)

    def check_size(self, body: str) -> str:
        """``body`` (JSON text) if within the payload cap; else ``OutboxError``."""
        # A character is at most 4 UTF-8 bytes: most payloads need no encoding to check.
        if len(body) * 4 <= self.max_payload_bytes:
            return body
        size = len(body.encode())
        if size > self.max_payload_bytes:
            raise OutboxError(
                f"payload is {size} bytes, over the {self.max_payload_bytes}-byte cap"
            )
        return body

    async def enqueue(
        self,
        session: AsyncSession,
        event: BaseModel | None = None,
        *,
        aggregate_type: str | None = None,
        aggregate_id: str | None = None,
        type: str | None = None,
        payload: Any = None,
        headers: Mapping[str, str] | None = None,
        id: uuid.UUID | None = None,
    ) -> uuid.UUID:
        """Add one event to ``session``'s transaction; return its message id (UUIDv7).

        Either an ``event`` instance (a class declared with ``relaybus.events.event``:
        serialised once, ``type`` and ``schema_version`` from its declaration, the
        aggregate from its declaration or the arguments), or ``aggregate_type``,
        ``aggregate_id``, ``type`` and a JSON-serialisable ``payload``.

        ``headers`` may carry ``traceparent``, ``correlation_id``, ``causation_id`` or
        custom string headers; not relaybus's envelope names (``id``, ``type``, …) nor
        its reserved ``x-`` namespace. Raises ``OutboxError`` before writing on
        invalid input (see ``name_problem`` and ``headers_problem``).
        """
        params: dict[str, Any] = {}
        described = describe(event, aggregate_type, aggregate_id, type, payload, headers)
        traced = tracer()
        if traced.enabled:
            span, described, id = _write_span(traced, described, id)
            try:
                message_id = self._event(params, *described, id)
                await session.execute(self._event_inserts[bool(described[4])], params)
            except BaseException as err:
                span.fail(err)
                raise
            finally:
                span.end()
        else:
            message_id = self._event(params, *described, id)
            await session.execute(self._event_inserts[bool(described[4])], params)
        if self.delete_on_write:
            await session.execute(_DELETE_WRITTEN, {"rb_id": message_id})
        return message_id

    @classmethod
    def from_settings(cls, settings: Settings) -> Outbox:
        """The writer ``settings`` describe (partitions, payload cap, delete-on-write)."""
        return cls(
            settings.outbox_partitions,
            settings.outbox_max_payload_bytes,
            delete_on_write=settings.outbox_delete_on_write,
        )

    async def write(
        self,
        session: AsyncSession,
        statement: BusinessStatement,
        params: Mapping[str, Any] | None = None,
        *,
        event: BaseModel | None = None,
        aggregate_type: str | None = None,
        aggregate_id: str | None = None,
        type: str | None = None,
        payload: Any = None,
        headers: Mapping[str, str] | None = None,
        id: uuid.UUID | None = None,
    ) -> tuple[uuid.UUID, Result[Any]]:
        """Run the business ``statement`` and add its event in **one** SQL statement.

        Same guarantees as ``enqueue`` (the row joins ``session``'s transaction, per-key
        order, validation before anything is written), one round trip fewer: the
        outbox INSERT is a data-modifying CTE of the business INSERT/UPDATE/DELETE,
        so both happen or neither does. The event is written even if the business
        statement touches no row (check ``rowcount`` and roll back if that matters).
        ``aggregate_id`` must be known beforehand (e.g. a snowflake id from
        ``relaybus.snowflake``). Returns the message id and the business statement's
        own result (``rowcount``, ``RETURNING`` rows), as ``session.execute`` would.
        The event is an ``event=`` instance or the four arguments, as for ``enqueue``.

        ``params`` are the business statement's parameters, as for
        ``session.execute(statement, params)``; their names must not start with
        ``rb_``. A statement built once and reused with fresh parameters is combined
        once (at most 256 distinct statements kept).
        """
        all_params = dict(params) if params else {}
        described = describe(event, aggregate_type, aggregate_id, type, payload, headers)
        traced = tracer()
        span = NULL_SPAN
        if traced.enabled:
            span, described, id = _write_span(traced, described, id)
        try:
            message_id = self._event(all_params, *described, id)
            combined = self._combined.get(statement)
            if combined is None:
                combined = self.combine(statement)
                if len(self._combined) >= 256:
                    self._combined.clear()
                self._combined[statement] = combined
            result = await session.execute(combined[bool(described[4])], all_params)
        except BaseException as err:
            span.fail(err)
            raise
        finally:
            span.end()
        if self.delete_on_write:
            # A separate statement: a sibling CTE would not see the row it inserts.
            await session.execute(_DELETE_WRITTEN, {"rb_id": message_id})
        return message_id, result

    def combine(self, statement: BusinessStatement) -> tuple[BusinessStatement, BusinessStatement]:
        """``statement`` with the event INSERT as a data-modifying CTE (without and with
        user headers): what ``write`` executes, for callers that measure it. PostgreSQL
        runs each CTE exactly once, read or not, so the statement's result stays its
        own: rowcount, RETURNING rows, no wrapper to describe."""
        return statement.add_cte(self._event_ctes[0]), statement.add_cte(self._event_ctes[1])

    def _event(
        self,
        params: dict[str, Any],
        aggregate_type: str,
        aggregate_id: str,
        type: str,
        payload: Any,
        headers: Mapping[str, str] | None,
        id: uuid.UUID | None,
    ) -> uuid.UUID:
        """Validate one event, add its bind parameters (``rb_``-prefixed) to ``params``
        and return its message id.

        Runs once per business transaction, with the caches cold: kept to the few
        operations it needs (each costs several times its ``timeit`` figure here).
        """
        if (problem := name_problem(aggregate_type, aggregate_id, type)) is not None:
            raise OutboxError(problem)
        if headers:
            if (problem := headers_problem(headers)) is not None:
                raise OutboxError(problem)
            params["rb_headers"] = json.dumps(dict(headers))
        params["rb_payload"] = (
            self.check_size(payload.text)
            if isinstance(payload, _Encoded)
            else self.encode_payload(payload)
        )
        message_id = id or uuid7()
        params["rb_id"] = message_id
        params["rb_aggregatetype"] = aggregate_type
        params["rb_aggregateid"] = aggregate_id
        params["rb_type"] = type
        params["rb_partition"] = partition_for(aggregate_id, self.partitions)
        return message_id
