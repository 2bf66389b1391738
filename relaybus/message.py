"""The message envelope every broker adapter publishes and every consumer receives."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from uuid import UUID

from relaybus.ids import uuid7

CONTENT_TYPE = "application/json"
SCHEMA_VERSION = "1"


_CONTENT_TYPE_BYTES = CONTENT_TYPE.encode()


@lru_cache(maxsize=4096)
def _utf8(value: str) -> bytes:
    return value.encode()


def rfc3339(ts: datetime) -> str:
    """``ts`` as RFC 3339 UTC with a ``Z`` suffix (naive datetimes are taken as UTC)."""
    if ts.tzinfo is None:
        return f"{ts.isoformat()}Z"  # the relay's hot path: outbox timestamps are naive UTC
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Message:
    """One event: Debezium outbox fields plus the tracing headers
    (``docs/architecture.md``, "Contracts").

    ``payload`` is the exact JSON bytes sent as the Kafka value / AMQP body; adapters
    never re-encode it, so what a consumer reads is byte-identical to what was stored.
    """

    type: str
    aggregatetype: str
    aggregateid: str
    payload: bytes
    id: UUID = field(default_factory=uuid7)
    occurred_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    schema_version: str = SCHEMA_VERSION
    traceparent: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_data(cls, type: str, aggregatetype: str, aggregateid: str, data: Any) -> Message:
        """A message whose payload is ``data`` encoded as compact JSON."""
        body = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
        return cls(type=type, aggregatetype=aggregatetype, aggregateid=aggregateid, payload=body)

    def with_traceparent(self, traceparent: str) -> Message:
        """This message carrying ``traceparent`` instead (the relay's publish span):
        a copy made without ``dataclasses.replace``, which costs several times as much
        on the relay's path."""
        clone = object.__new__(Message)
        fields = dict(self.__dict__)
        fields.pop("_headers", None)  # the cached wire headers name the old context
        fields.pop("_kafka_headers", None)
        fields["traceparent"] = traceparent
        clone.__dict__.update(fields)
        return clone

    def headers(self) -> dict[str, str]:
        """The wire headers, identical on Kafka and RabbitMQ (absent optional ones omitted).

        Computed once per message (the relay's hot path asks more than once); treat the
        returned dict as read-only.
        """
        cached: dict[str, str] | None = self.__dict__.get("_headers")
        if cached is None:
            cached = self._build_headers()
            self.__dict__["_headers"] = cached  # frozen dataclass: bypass __setattr__
        return cached

    def kafka_headers(self) -> list[tuple[str, bytes]]:
        """``headers()`` as Kafka record headers (UTF-8 values), computed once.

        Built directly rather than by encoding ``headers()``: this runs once per
        published message, and type names repeat, so their encodings are memoised.
        """
        cached: list[tuple[str, bytes]] | None = self.__dict__.get("_kafka_headers")
        if cached is None:
            if self.extra_headers or self.traceparent or self.correlation_id or self.causation_id:
                cached = [(k, v.encode()) for k, v in self.headers().items()]
            else:
                cached = [
                    ("id", str(self.id).encode()),
                    ("type", _utf8(self.type)),
                    ("aggregatetype", _utf8(self.aggregatetype)),
                    ("aggregateid", self.aggregateid.encode()),
                    ("occurred_at", rfc3339(self.occurred_at).encode()),
                    ("content-type", _CONTENT_TYPE_BYTES),
                    ("schema_version", _utf8(self.schema_version)),
                ]
            self.__dict__["_kafka_headers"] = cached
        return cached

    def _build_headers(self) -> dict[str, str]:
        out = {
            "id": str(self.id),
            "type": self.type,
            "aggregatetype": self.aggregatetype,
            "aggregateid": self.aggregateid,
            "occurred_at": rfc3339(self.occurred_at),
            "content-type": CONTENT_TYPE,
            "schema_version": self.schema_version,
        }
        for name, value in (
            ("traceparent", self.traceparent),
            ("correlation_id", self.correlation_id),
            ("causation_id", self.causation_id),
        ):
            if value is not None:
                out[name] = value
        return {**self.extra_headers, **out}

    def data(self) -> Any:
        """The decoded JSON payload."""
        return json.loads(self.payload)
