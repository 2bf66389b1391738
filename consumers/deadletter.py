"""The headers of a dead letter (DESIGN.md §3), the same on both brokers."""

from __future__ import annotations

import traceback
from datetime import UTC, datetime

from consumers import incoming as h
from consumers.incoming import Incoming, InvalidMessage
from relaybus.message import rfc3339

MAX_STACKTRACE = 8000


def dead_letter_headers(
    original: dict[str, str],
    *,
    reason: str,
    error: BaseException | None,
    attempts: int,
    topic: str,
    partition: int | None,
    offset: int | None,
    consumer: str,
) -> dict[str, str]:
    """``original`` business headers plus every ``x-…`` dead-letter header.

    ``topic``/``partition``/``offset`` are where the message was first consumed
    (its main topic or queue, not a retry tier); RabbitMQ has no partition or
    offset, so those two are empty strings.
    """
    stack = ""
    if error is not None:
        stack = "".join(traceback.format_exception(error))[-MAX_STACKTRACE:]
    return {
        **{k: v for k, v in original.items() if k not in h.RELAYBUS_HEADERS},
        h.DLQ_REASON: reason,
        h.EXCEPTION_TYPE: type(error).__qualname__ if error is not None else "",
        h.EXCEPTION_MESSAGE: str(error)[:2000] if error is not None else "",
        h.STACKTRACE: stack,
        h.ATTEMPTS: str(attempts),
        h.ORIGINAL_TOPIC: topic,
        h.ORIGINAL_PARTITION: "" if partition is None else str(partition),
        h.ORIGINAL_OFFSET: "" if offset is None else str(offset),
        h.CONSUMER: consumer,
        h.FAILED_AT: rfc3339(datetime.now(UTC)),
    }


def _as_int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def origin_of(
    headers: dict[str, str],
    topic: str,
    partition: int | None,
    offset: int | None,
    *,
    retried: bool,
) -> tuple[str, int | None, int | None]:
    """Where a delivery was first consumed. A retried one (from a retry tier, or back
    from a RabbitMQ retry queue) carries it in ``x-original-*`` headers; anything else
    is its own origin (headers a foreign producer set are not trusted)."""
    if not retried or h.ORIGINAL_TOPIC not in headers:
        return topic, partition, offset
    return (
        headers[h.ORIGINAL_TOPIC],
        _as_int(headers.get(h.ORIGINAL_PARTITION)),
        _as_int(headers.get(h.ORIGINAL_OFFSET)),
    )


def origin(message: Incoming) -> tuple[str, int | None, int | None]:
    """``origin_of`` for a decoded message (retried when ``attempt`` > 1)."""
    return origin_of(
        message.headers,
        message.source,
        message.partition,
        message.offset,
        retried=message.attempt > 1,
    )


def dead_letter_for(
    message: Incoming, *, reason: str, error: BaseException | None, consumer: str
) -> dict[str, str]:
    """Dead-letter headers for a decoded ``message`` after its attempt ``attempt``."""
    topic, partition, offset = origin(message)
    return dead_letter_headers(
        message.headers,
        reason=reason,
        error=error,
        attempts=message.attempt,
        topic=topic,
        partition=partition,
        offset=offset,
        consumer=consumer,
    )


def dead_letter_for_invalid(
    headers: dict[str, str],
    error: InvalidMessage,
    *,
    topic: str,
    partition: int | None,
    offset: int | None,
    consumer: str,
) -> dict[str, str]:
    """Dead-letter headers for a delivery that could not be decoded at all."""
    try:
        attempts = int(headers.get(h.ATTEMPTS, "0") or 0) + 1
    except ValueError:
        attempts = 1
    return dead_letter_headers(
        headers,
        reason=error.reason,
        error=error,
        attempts=attempts,
        topic=topic,
        partition=partition,
        offset=offset,
        consumer=consumer,
    )
