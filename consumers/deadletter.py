"""The headers of a dead letter (DESIGN.md §3), the same on both brokers."""

from __future__ import annotations

import traceback
from datetime import UTC, datetime

from consumers import incoming as h
from consumers.incoming import Incoming
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


def origin(message: Incoming) -> tuple[str, int | None, int | None]:
    """Where ``message`` was first consumed: carried in headers through retry tiers."""
    topic = message.headers.get(h.ORIGINAL_TOPIC) or message.source
    if h.ORIGINAL_TOPIC in message.headers:
        part = message.headers.get(h.ORIGINAL_PARTITION, "")
        off = message.headers.get(h.ORIGINAL_OFFSET, "")
        return topic, int(part) if part else None, int(off) if off else None
    return topic, message.partition, message.offset
