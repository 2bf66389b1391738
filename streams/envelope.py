"""relaybus's envelope headers on records a stream processor sends, and reading them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from relaybus.message import rfc3339


def envelope(
    message_type: str,
    key: str,
    message_id: str,
    causation: str | None,
    aggregate_type: str = "saga",
    occurred_at: str | None = None,
) -> list[tuple[str, bytes]]:
    """The envelope headers (DESIGN §2) of a record a processor sends: the services'
    ``ConsumerApp`` workers decode it like any relayed event. ``occurred_at``
    (RFC 3339) defaults to now; a batch processor passes one for the whole batch."""
    headers = {
        "id": message_id,
        "type": message_type,
        "aggregatetype": aggregate_type,
        "aggregateid": key,
        "occurred_at": occurred_at or rfc3339(datetime.now(UTC)),
        "content-type": "application/json",
        "schema_version": "1",
    }
    if causation:
        headers["causation_id"] = causation
    return [(k, v.encode()) for k, v in headers.items()]


def header(headers: Any, name: str) -> str | None:
    """A header's text value from faust's headers (a mapping or a list of pairs);
    None if absent or not UTF-8."""
    pairs = headers.items() if hasattr(headers, "items") else (headers or ())
    for key, value in pairs:
        if key == name and isinstance(value, bytes | bytearray):
            try:
                return bytes(value).decode()
            except UnicodeDecodeError:
                return None
    return None
