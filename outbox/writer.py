"""The outbox writer: adds an event to the caller's SQL transaction."""

from __future__ import annotations

import json
import uuid
import zlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from relaybus.ids import uuid7

# pg_advisory_xact_lock(class, key): the class keeps our keys apart from other users'.
KEY_LOCK_CLASS = 0x5242  # "RB"

_INSERT = text(
    """
    WITH key_lock AS (SELECT pg_advisory_xact_lock(:lock_class, hashtext(:aggregateid)))
    INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload, timestamp, headers,
                        partition)
    SELECT :id, :aggregatetype, :aggregateid, :type, CAST(:payload AS jsonb), :timestamp,
           CAST(:headers AS jsonb), :partition
      FROM key_lock
    """
)


class OutboxError(ValueError):
    """The event was refused before anything was written (bad payload, names, size)."""


def partition_for(aggregate_id: str, partitions: int) -> int:
    """The relay partition of a key: CRC-32 of its UTF-8 bytes modulo ``partitions``.

    Stable across processes and Python versions (unlike ``hash()``).
    """
    return zlib.crc32(aggregate_id.encode()) % partitions


class Outbox:
    """Writes outbox rows inside the caller's ``AsyncSession`` transaction.

    ``enqueue`` neither commits nor flushes anything else: the row commits or rolls
    back with the caller's business writes. Rows of one ``aggregate_id`` are
    serialised by a transaction-scoped advisory lock, so their ``sequence`` order is
    their commit order and the relay publishes them in that order.
    """

    def __init__(self, partitions: int = 16, max_payload_bytes: int = 1_048_576) -> None:
        self.partitions = partitions
        self.max_payload_bytes = max_payload_bytes

    def encode_payload(self, payload: Any) -> str:
        """``payload`` as JSON text; raises ``OutboxError`` if not JSON or over the cap."""
        try:
            body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise OutboxError(f"payload is not JSON-serialisable: {err}") from err
        size = len(body.encode())
        if size > self.max_payload_bytes:
            raise OutboxError(
                f"payload is {size} bytes, over the {self.max_payload_bytes}-byte cap"
            )
        return body

    async def enqueue(
        self,
        session: AsyncSession,
        *,
        aggregate_type: str,
        aggregate_id: str,
        type: str,
        payload: Any,
        headers: Mapping[str, str] | None = None,
        id: uuid.UUID | None = None,
    ) -> uuid.UUID:
        """Add one event to ``session``'s transaction; return its message id (UUIDv7).

        ``headers`` may carry ``traceparent``, ``correlation_id``, ``causation_id`` or
        custom string headers. Raises ``OutboxError`` before writing on invalid input.
        """
        for field, value in (
            ("aggregate_type", aggregate_type),
            ("aggregate_id", aggregate_id),
            ("type", type),
        ):
            if not value or len(value) > 255:
                raise OutboxError(f"{field} must be 1..255 characters, got {value!r}")
        extra = dict(headers or {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
            raise OutboxError("headers must map strings to strings")
        message_id = id or uuid7()
        await session.execute(
            _INSERT,
            {
                "lock_class": KEY_LOCK_CLASS,
                "id": message_id,
                "aggregatetype": aggregate_type,
                "aggregateid": aggregate_id,
                "type": type,
                "payload": self.encode_payload(payload),
                "timestamp": datetime.now(UTC).replace(tzinfo=None),
                "headers": json.dumps(extra),
                "partition": partition_for(aggregate_id, self.partitions),
            },
        )
        return message_id
