"""What a handler receives: a decoded message plus where it came from."""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

# Headers relaybus adds on the way through retries and dead letters; a replay or a
# fresh delivery starts without them.
ATTEMPTS = "x-attempts"
RETRY_AT = "x-retry-at"
CONSUMER = "x-consumer"
ORIGINAL_TOPIC = "x-original-topic"
ORIGINAL_PARTITION = "x-original-partition"
ORIGINAL_OFFSET = "x-original-offset"
DLQ_REASON = "x-dlq-reason"
EXCEPTION_TYPE = "x-exception-type"
EXCEPTION_MESSAGE = "x-exception-message"
STACKTRACE = "x-stacktrace"
FAILED_AT = "x-failed-at"
DEAD_LETTER_HEADERS = (
    DLQ_REASON,
    EXCEPTION_TYPE,
    EXCEPTION_MESSAGE,
    STACKTRACE,
    ATTEMPTS,
    ORIGINAL_TOPIC,
    ORIGINAL_PARTITION,
    ORIGINAL_OFFSET,
    CONSUMER,
    FAILED_AT,
)
RELAYBUS_HEADERS = frozenset((*DEAD_LETTER_HEADERS, RETRY_AT))


class InvalidMessage(ValueError):
    """The message can never be handled (undecodable, unknown type, fails its schema).

    Raised by decoding, or by a handler for a schema failure: the message goes
    straight to the dead-letter queue, without retries. ``reason`` is a short code.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Incoming:
    """One delivery of a message.

    ``raw`` is the exact body bytes (the dead letter carries them unchanged);
    ``payload`` is its decoded JSON. ``attempt`` is 1 on the first delivery and
    grows through the retry tiers. ``source``/``partition``/``offset`` locate the
    original record (for RabbitMQ, the queue, and no partition/offset).
    """

    id: uuid.UUID
    type: str
    key: str
    payload: Any
    raw: bytes
    headers: dict[str, str]
    source: str
    partition: int | None = None
    offset: int | None = None
    attempt: int = 1

    def business_headers(self) -> dict[str, str]:
        """Headers minus relaybus's retry/dead-letter bookkeeping."""
        return {k: v for k, v in self.headers.items() if k not in RELAYBUS_HEADERS}


def decode(
    raw: bytes,
    headers: Mapping[str, str],
    *,
    key: str,
    source: str,
    partition: int | None = None,
    offset: int | None = None,
    accepted_types: Collection[str] | None = None,
    max_bytes: int = 1_048_576,
) -> Incoming:
    """Decode one delivery; raises ``InvalidMessage`` with a reason code:

    ``oversize``, ``missing-id``, ``bad-id``, ``missing-type``, ``unknown-type``,
    ``not-json`` (includes truncated JSON), ``not-utf8``.
    """
    if len(raw) > max_bytes:
        raise InvalidMessage("oversize", f"{len(raw)} bytes, over the {max_bytes}-byte limit")
    message_id = headers.get("id")
    if not message_id:
        raise InvalidMessage("missing-id", "no 'id' header")
    try:
        parsed_id = uuid.UUID(message_id)
    except ValueError:
        raise InvalidMessage("bad-id", f"'id' header {message_id!r} is not a UUID") from None
    type_ = headers.get("type")
    if not type_:
        raise InvalidMessage("missing-type", "no 'type' header")
    if accepted_types is not None and type_ not in accepted_types:
        raise InvalidMessage("unknown-type", f"type {type_!r} is not handled here")
    try:
        payload = json.loads(raw)
    except UnicodeDecodeError as err:
        raise InvalidMessage("not-utf8", str(err)) from None
    except ValueError as err:
        raise InvalidMessage("not-json", str(err)) from None
    try:
        attempt = int(headers.get(ATTEMPTS, "0")) + 1
    except ValueError:
        attempt = 1
    return Incoming(
        id=parsed_id,
        type=type_,
        key=key,
        payload=payload,
        raw=raw,
        headers=dict(headers),
        source=source,
        partition=partition,
        offset=offset,
        attempt=attempt,
    )


def header_text(value: Any) -> str:
    """A header value as text (Kafka gives bytes, AMQP may give bytes, str or numbers)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)
