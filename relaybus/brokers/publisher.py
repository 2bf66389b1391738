"""The interface the relay (and tools) publish through, whatever the broker."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from relaybus.message import Message


class PublishError(Exception):
    """A message could not be published; ``permanent`` means retrying cannot help.

    Transient errors (broker down, timeout) are retried by the caller with backoff;
    permanent ones (too large, unroutable) mark the message failed.
    """

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class Publisher(Protocol):
    """Publishes messages to one broker.

    ``publish`` returns only when the broker acknowledged every message (Kafka
    acks=all, RabbitMQ publisher confirms). On failure it raises ``PublishError``;
    messages before the failing one may have been published (at-least-once).
    Order is kept per ``aggregateid`` within one call.
    """

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish(self, messages: Sequence[Message]) -> None: ...
