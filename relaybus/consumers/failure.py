"""The failure path, decided once for both brokers (compare Watermill's poison middleware).

A ``Processor`` returns a ``Verdict`` for each delivery; ``FailurePath`` turns a
retry or dead verdict, or a delivery that could not be decoded, into a ``Copy``:
the exact record to send (destination by the one naming rule, body, headers). The
Kafka and RabbitMQ workers only send what they are told and then ack; they never
build headers or names themselves, so retry and dead-letter headers mean the same
on both brokers.
"""

from __future__ import annotations

import re
import time
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from relaybus import headers as rh
from relaybus.consumers.incoming import Incoming, InvalidMessage, WireLimits
from relaybus.consumers.naming import dlq_name, retry_name
from relaybus.message import rfc3339
from relaybus.tracing import tracer

MAX_STACKTRACE = 8000
MAX_EXCEPTION_MESSAGE = 2000
# Room for relaybus's own headers on a copy, beyond the business headers the wire
# limits let in (reason, exception, stack trace and the rest).
COPY_HEADER_ALLOWANCE = 32 * 1024
# userinfo in a URL: ``scheme://user:password@``. Every part bounded (RFC 3986 puts
# no limit, real ones are short), so a match attempt costs a constant, not the rest
# of the text: an unbounded ``[a-z0-9.]*`` made 80 KB of ``a.a.a…`` take seconds.
_CREDENTIALS = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]{0,31}://[^:/@\s]{0,256}:)[^@\s]{1,512}@")
# Text is cut to its bound before it is redacted, with this much to spare, so a
# credential straddling the cut is still seen whole and masked.
_REDACT_MARGIN = 1024


def redact(text: str, *, keep: int, tail: bool = False) -> str:
    """``text`` cut to ``keep`` characters (its start, or its end with ``tail``) with
    URL credentials masked; linear in ``keep``, whatever the length of ``text``."""
    cut = text[-(keep + _REDACT_MARGIN) :] if tail else text[: keep + _REDACT_MARGIN]
    masked = _CREDENTIALS.sub(r"\1***@", cut)
    return masked[-keep:] if tail else masked[:keep]


class Outcome(StrEnum):
    """What became of one delivery."""

    DONE = "done"  # applied; ack/commit
    DUPLICATE = "duplicate"  # applied before; ack/commit, nothing done
    RETRY = "retry"  # failed; a copy goes to the next retry tier
    DEAD = "dead"  # failed for good; a copy goes to the dead-letter queue


class CopyKind(StrEnum):
    RETRY = "retry"
    DEAD_LETTER = "dead-letter"


@dataclass(frozen=True)
class Verdict:
    """A processor's decision on one delivery: ``outcome``, plus for ``DEAD`` the
    ``reason`` code, for ``RETRY`` the ``delay`` before the next attempt, and the
    ``error`` that caused either."""

    outcome: Outcome
    reason: str = ""
    error: BaseException | None = None
    delay: float = 0.0


DONE = Verdict(Outcome.DONE)
DUPLICATE = Verdict(Outcome.DUPLICATE)


@dataclass(frozen=True)
class Copy:
    """A record a worker must send (and have acknowledged) before it acks the delivery.

    ``delay`` is the wait before a retry copy is due (RabbitMQ uses it as the
    per-message TTL; Kafka tiers read ``x-retry-at``). The AMQP ``message_id`` of a
    copy is the delivery's own (a transport concern, set by the RabbitMQ worker).
    """

    kind: CopyKind
    destination: str
    body: bytes
    headers: dict[str, str]
    delay: float = 0.0

    def size(self) -> int:
        """Body plus header bytes (names and values)."""
        return len(self.body) + sum(
            len(k.encode()) + len(v.encode("utf-8", "surrogatepass"))
            for k, v in self.headers.items()
        )


def describe(error: BaseException | None) -> tuple[str, str, str]:
    """(type, message, stack trace) of ``error`` for a dead letter: bounded, with URL
    credentials masked (SQL parameters are hidden by the engine: ``hide_parameters``)."""
    if error is None:
        return "", "", ""
    message = redact(str(error), keep=MAX_EXCEPTION_MESSAGE)
    stack = redact("".join(traceback.format_exception(error)), keep=MAX_STACKTRACE, tail=True)
    return type(error).__qualname__, message, stack


def salvage_headers(pairs: Iterable[tuple[Any, Any]], limits: WireLimits) -> dict[str, str]:
    """Headers of a delivery ``read_headers`` refused, kept for its dead letter as far
    as they are text: undecodable names and values, repeats, and anything beyond the
    limits are left out (an ``id`` that is not UTF-8 is dropped, never replaced)."""
    out: dict[str, str] = {}
    size = 0
    # The envelope first, so the identity survives the count limit.

    def outside_envelope(pair: tuple[Any, Any]) -> bool:
        name = pair[0].decode(errors="replace") if isinstance(pair[0], bytes) else pair[0]
        return name not in rh.ENVELOPE

    for name, value in sorted(pairs, key=outside_envelope):
        if len(out) >= limits.max_headers:
            break
        try:
            name_text = name.decode() if isinstance(name, bytes) else str(name)
            raw = value if isinstance(value, bytes | bytearray) else str(value).encode()
            value_text = bytes(raw).decode()
        except UnicodeDecodeError:
            continue
        size += len(name_text) + len(value_text)
        if size > limits.max_header_bytes or name_text in out or rh.is_reserved(name_text):
            continue
        out[name_text] = value_text
    return out


class FailurePath:
    """Builds retry and dead-letter copies for one handler reading ``source``.

    - Retry copy of attempt ``n``: to ``<source>.retry.<n>`` (never tier 0, never a
      tier beyond ``tiers``), with the business headers plus ``x-attempts`` = n,
      ``x-retry-at`` (epoch seconds), ``x-consumer``, ``x-original-*``.
    - Dead letter: to ``<source>.dlq`` with the original business headers (same
      ``id``) plus every dead-letter header (docs/architecture.md, "Contracts").
    - A copy never exceeds ``copy_budget`` bytes: the stack trace is cut first, then
      the body is dropped for a stub that keeps the id, the reason and where the body
      is (``x-dlq-body-dropped``).
    """

    def __init__(self, consumer: str, source: str, tiers: int, limits: WireLimits) -> None:
        self.consumer = consumer
        self.source = source
        self.tiers = tiers
        self.limits = limits
        self.copy_budget = limits.max_bytes + limits.max_header_bytes + COPY_HEADER_ALLOWANCE

    def decide(self, verdict: Verdict, message: Incoming) -> Copy | None:
        """The copy a verdict needs (None for done and duplicate)."""
        if verdict.outcome is Outcome.RETRY:
            if message.attempt > self.tiers:  # a policy with no tier left: dead, not tier n+1
                return self.dead(message, "max-attempts", verdict.error)
            return self.retry(message, verdict.delay)
        if verdict.outcome is Outcome.DEAD:
            return self.dead(message, verdict.reason, verdict.error)
        return None

    def retry(self, message: Incoming, delay: float) -> Copy:
        headers = {
            **message.business_headers(),
            rh.ATTEMPTS: str(message.attempt),
            rh.RETRY_AT: f"{time.time() + delay:.3f}",
            rh.CONSUMER: self.consumer,
            **self._origin(message.partition, message.offset),
        }
        tier = min(max(1, message.attempt), self.tiers)
        return Copy(
            CopyKind.RETRY, retry_name(self.source, tier), message.raw, headers, max(0.0, delay)
        )

    def dead(self, message: Incoming, reason: str, error: BaseException | None) -> Copy:
        return self._dead_letter(
            message.raw,
            message.business_headers(),
            reason=reason,
            error=error,
            attempts=message.attempt,
            partition=message.partition,
            offset=message.offset,
        )

    def invalid(
        self,
        raw: bytes,
        headers: Mapping[str, str],
        error: InvalidMessage,
        *,
        attempt: int,
        partition: int | None,
        offset: int | None,
    ) -> Copy:
        """The dead letter of a delivery that could not be decoded at all (with tracing
        on, a ``dead-letter`` span in the trace the delivery names, if it names one)."""
        traced = tracer()
        if traced.enabled:
            span = traced.start(
                f"dead-letter {self.source}",
                kind="consumer",
                parent=headers,
                links=[(headers, {})],
                attributes={
                    "messaging.operation.type": "process",
                    "messaging.destination.name": self.source[:255],
                    "messaging.message.id": headers.get("id", "")[:64],
                    "relaybus.outcome": "dead",
                    "relaybus.dlq.reason": error.reason,
                },
            )
            span.fail(str(error)[:200])
            span.end()
        return self._dead_letter(
            raw,
            {k: v for k, v in headers.items() if not rh.is_reserved(k)},
            reason=error.reason,
            error=error,
            attempts=attempt,
            partition=partition,
            offset=offset,
        )

    def unreadable(self, partition: int, offset: int, error: BaseException) -> Copy:
        """A stub dead letter for a record the client could not even parse: no body
        or headers to copy, only where it is (read it with another client)."""
        copy = self._dead_letter(
            b"",
            {},
            reason="unreadable-record",
            error=error,
            attempts=1,
            partition=partition,
            offset=offset,
        )
        where = f"{self.source}/{partition}/{offset}"
        copy.headers[rh.BODY_DROPPED] = f"the client could not parse it; it is at {where}"
        return copy

    def _origin(self, partition: int | None, offset: int | None) -> dict[str, str]:
        return {
            rh.ORIGINAL_TOPIC: self.source,
            rh.ORIGINAL_PARTITION: "" if partition is None else str(partition),
            rh.ORIGINAL_OFFSET: "" if offset is None else str(offset),
        }

    def _dead_letter(
        self,
        raw: bytes,
        business: Mapping[str, str],
        *,
        reason: str,
        error: BaseException | None,
        attempts: int,
        partition: int | None,
        offset: int | None,
    ) -> Copy:
        exc_type, exc_message, stack = describe(error)
        headers = {
            **business,
            rh.DLQ_REASON: reason,
            rh.EXCEPTION_TYPE: exc_type,
            rh.EXCEPTION_MESSAGE: exc_message,
            rh.STACKTRACE: stack,
            rh.ATTEMPTS: str(attempts),
            **self._origin(partition, offset),
            rh.CONSUMER: self.consumer,
            rh.FAILED_AT: rfc3339(datetime.now(UTC)),
        }
        copy = Copy(CopyKind.DEAD_LETTER, dlq_name(self.source), raw, headers)
        if copy.size() <= self.copy_budget:
            return copy
        over = copy.size() - self.copy_budget
        headers[rh.STACKTRACE] = stack[over:] if over < len(stack) else ""
        copy = Copy(CopyKind.DEAD_LETTER, copy.destination, raw, headers)
        if copy.size() <= self.copy_budget:
            return copy
        # Still too large: a stub that keeps the identity and says where the body is.
        where = f"{self.source}/{partition if partition is not None else '-'}/"
        where += f"{offset if offset is not None else '-'}"
        stub = {
            k: v
            for k, v in headers.items()
            if k in ("id", "type", "aggregatetype", "aggregateid") or rh.is_reserved(k)
        }
        stub[rh.BODY_DROPPED] = f"{len(raw)} bytes, not copied; the original is at {where}"
        stub[rh.EXCEPTION_MESSAGE] = stub[rh.EXCEPTION_MESSAGE][:500]
        stub[rh.STACKTRACE] = ""
        stub = {k: v[:1024] if k != "id" else v for k, v in stub.items()}
        return Copy(CopyKind.DEAD_LETTER, copy.destination, b"", stub)
