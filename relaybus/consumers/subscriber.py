"""The one interface every broker's consume loop offers a worker (Watermill's
Subscriber, relaybus's way): ``KafkaWorker`` (on Kafka, or on the in-memory broker
through its ``Transport``) and ``RabbitWorker``."""

from __future__ import annotations

import asyncio
from typing import Protocol

from relaybus.consumers.app import Handler
from relaybus.consumers.processor import Processor


class Subscriber(Protocol):
    """Delivers ``handler``'s source to ``processor`` until ``stop`` is set.

    - **Delivery**: at least once. A delivery is acknowledged (offset committed,
      message acked) only after its verdict is final: the handler's transaction
      committed, or its retry or dead-letter copy was accepted by the broker. A crash
      redelivers; the inbox turns that into a duplicate, not a second effect.
    - **Order**: a Kafka partition's records of one key are handled in order; a
      RabbitMQ queue's deliveries run concurrently up to ``handler.concurrency`` (in
      order with 1).
    - **Failure**: a failed attempt is retried by the policy (a retry tier, or in
      place for ``ordered`` sources); the last failed attempt, or a delivery the trust
      boundary refuses, becomes a dead letter with its reason (``FailurePath``). One
      delivery never stops the loop; a broker outage is waited out with backoff.
    - ``ready`` is set once it consumes; ``run`` returns after ``stop`` with what was
      in hand finished and acknowledged.
    """

    handler: Handler
    processor: Processor
    ready: asyncio.Event

    async def run(self, stop: asyncio.Event) -> None: ...
