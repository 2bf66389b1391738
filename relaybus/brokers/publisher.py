"""The interface the relay (and tools) publish through, whatever the broker."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from relaybus.brokers.stalls import Stall
from relaybus.message import Message


class PublishError(Exception):
    """The broker could not be reached or did not answer: retrying later may help.

    Raised for the whole call; some messages of the call may have been published
    (at-least-once: the caller republishes them).
    """


@dataclass(frozen=True)
class Outcome:
    """What happened to one message of a ``publish`` call.

    ``ok``: the broker acknowledged it. ``error``: the broker (or a pre-send check)
    refused it for good, e.g. too large or unroutable. ``deferred``: not known
    published, publish it again later: not sent because an earlier message of the
    same key was refused in this call (per-key order), or its destination stalls
    (sent and not acknowledged in time, or not sent behind such a send).
    """

    error: str | None = None
    deferred: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and not self.deferred


PUBLISHED = Outcome()
DEFERRED = Outcome(deferred=True)


class Publisher(Protocol):
    """Publishes messages to one broker.

    ``publish`` returns one ``Outcome`` per message, in order, once the broker has
    acknowledged every message it accepted (Kafka acks=all, RabbitMQ confirms), or
    once a publisher that tracks destinations (Kafka partitions) stops waiting on one
    that stalls: its messages come back deferred while the others' outcomes are final.
    Order is kept per ``aggregateid`` within and across calls. A broker that is down
    raises ``PublishError`` instead. ``stalls()`` lists the destinations stalled now.
    """

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish(self, messages: Sequence[Message]) -> list[Outcome]: ...

    def stalls(self) -> list[Stall]: ...
