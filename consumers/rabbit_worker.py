"""Runs a ``Handler`` on a RabbitMQ queue: manual ack, TTL retry queues, DLQ."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractRobustConnection,
)
from pamqp.common import FieldTable

from consumers import incoming as h
from consumers.app import Handler, RabbitSource
from consumers.deadletter import dead_letter_for, dead_letter_for_invalid
from consumers.incoming import InvalidMessage, decode, header_text
from consumers.processor import Processor
from relaybus.brokers.rabbitmq import EXCHANGE

log = logging.getLogger(__name__)
QUORUM: FieldTable = {"x-queue-type": "quorum"}


def retry_queue(queue: str, tier: int) -> str:
    return f"{queue}.retry.{tier}"


def dlq_queue(queue: str) -> str:
    return f"{queue}.dlq"


def amqp_headers(message: AbstractIncomingMessage) -> dict[str, str]:
    """Text headers of a delivery; ``id``/``type`` fall back to the AMQP properties.

    RabbitMQ's own ``x-death``/``x-first-death-*`` bookkeeping is dropped: it
    describes the broker's hops, not the message."""
    headers = {
        k: header_text(v)
        for k, v in (message.headers or {}).items()
        if not (k == "x-death" or k.startswith(("x-first-death", "x-last-death")))
    }
    if "id" not in headers and message.message_id:
        headers["id"] = message.message_id
    if "type" not in headers and message.type:
        headers["type"] = message.type
    return headers


async def declare_topology(channel: AbstractChannel, source: RabbitSource, tiers: int) -> None:
    """The work queue (quorum, bound to ``relaybus.events``), its DLQ (quorum) and its
    retry queues (durable, dead-lettering expired messages back to the work queue)."""
    exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(source.queue, durable=True, arguments=QUORUM)
    await queue.bind(exchange, routing_key=source.binding)
    await channel.declare_queue(dlq_queue(source.queue), durable=True, arguments=QUORUM)
    for n in range(1, tiers + 1):
        await channel.declare_queue(
            retry_queue(source.queue, n),
            durable=True,
            arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": source.queue},
        )


class RabbitWorker:
    """Consumes ``handler.source.queue``.

    - Prefetch ``handler.concurrency``; each delivery is acked only after its handler
      transaction committed, or after its retry copy / dead letter was confirmed.
      A crash before the ack redelivers (the inbox dedupes).
    - A failed attempt ``n`` is republished to ``<queue>.retry.<n>`` with a
      per-message TTL from the retry policy; on expiry RabbitMQ dead-letters it back
      to the work queue. The last attempt, or an invalid message, goes to
      ``<queue>.dlq``.
    - The connection is robust: after a broker restart it reconnects, redeclares
      and resumes consuming; unacked deliveries are redelivered.
    """

    def __init__(self, handler: Handler, processor: Processor, url: str) -> None:
        assert isinstance(handler.source, RabbitSource)
        self.handler = handler
        self.source: RabbitSource = handler.source
        self.processor = processor
        self.url = url
        self.ready = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._channel: AbstractChannel | None = None

    async def run(self, stop: asyncio.Event) -> None:
        connection: AbstractRobustConnection = await aio_pika.connect_robust(self.url)
        try:
            channel = await connection.channel(publisher_confirms=True)
            self._channel = channel
            await channel.set_qos(prefetch_count=self.handler.concurrency)
            await declare_topology(channel, self.source, self.handler.retry.tiers)
            queue = await channel.get_queue(self.source.queue)
            tag = await queue.consume(self._on_message)
            self.ready.set()
            await stop.wait()
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
            if self._tasks:
                # In-flight deliveries get one handler timeout to finish (a breaker may
                # hold them); the rest are cancelled, unacked, and redelivered later.
                _, late = await asyncio.wait(set(self._tasks), timeout=self.handler.timeout)
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
        finally:
            await connection.close()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # Deliveries run concurrently (bounded by the prefetch), not one by one.
        task = asyncio.create_task(self._handle(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        try:
            await self._route(message)
            await message.ack()
        except Exception as err:
            # Could not confirm a retry copy / dead letter (or the channel died): leave
            # the delivery to RabbitMQ, which redelivers it.
            log.warning("%s: %r; delivery returned to the queue", self.handler.name, err)
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)

    async def _route(self, message: AbstractIncomingMessage) -> None:
        handler, queue = self.handler, self.source.queue
        headers = amqp_headers(message)
        try:
            incoming = decode(
                message.body,
                headers,
                key=message.routing_key or "",
                source=queue,
                accepted_types=handler.types,
                max_bytes=handler.max_bytes,
            )
        except InvalidMessage as err:
            self.processor.stats["invalid"] += 1
            log.warning("%s: invalid message: %s", handler.name, err)
            await self._publish(
                dlq_queue(queue),
                message,
                dead_letter_for_invalid(
                    headers, err, topic=queue, partition=None, offset=None, consumer=handler.name
                ),
            )
            return
        verdict = await self.processor.process(incoming)
        if verdict.action == "dead":
            await self._publish(
                dlq_queue(queue),
                message,
                dead_letter_for(
                    incoming, reason=verdict.reason, error=verdict.error, consumer=handler.name
                ),
            )
        elif verdict.action == "retry":
            headers = {
                **incoming.business_headers(),
                h.ATTEMPTS: str(incoming.attempt),
                h.CONSUMER: handler.name,
                h.ORIGINAL_TOPIC: queue,
            }
            await self._publish(
                retry_queue(queue, incoming.attempt), message, headers, expiration=verdict.delay
            )

    async def _publish(
        self,
        queue: str,
        original: AbstractIncomingMessage,
        headers: dict[str, str],
        expiration: float | None = None,
    ) -> None:
        """Send a copy of ``original`` (same body, id, type) to ``queue``; confirmed."""
        assert self._channel is not None
        copy = aio_pika.Message(
            body=original.body,
            headers=dict[str, Any](headers),
            message_id=original.message_id or headers.get("id"),
            type=original.type or headers.get("type"),
            content_type=original.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            expiration=max(expiration, 0.001) if expiration is not None else None,
        )
        await self._channel.default_exchange.publish(copy, routing_key=queue, mandatory=True)
