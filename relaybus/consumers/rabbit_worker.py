"""Runs a ``Handler`` on a RabbitMQ queue: manual ack, TTL retry queues, DLQ."""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractRobustConnection,
)
from aio_pika.exceptions import AMQPError
from pamqp.common import FieldTable

from relaybus import headers as rh
from relaybus.backoff import Backoff
from relaybus.brokers.rabbitmq import EXCHANGE
from relaybus.consumers.app import Handler, RabbitSource
from relaybus.consumers.failure import Copy, CopyKind, FailurePath, Outcome, salvage_headers
from relaybus.consumers.incoming import InvalidMessage, decode, read_headers, strict_int
from relaybus.consumers.naming import dlq_name, retry_name, returns_name
from relaybus.consumers.processor import Processor

log = logging.getLogger(__name__)
QUORUM: FieldTable = {"x-queue-type": "quorum"}
# RabbitMQ's own dead-lettering bookkeeping: it describes the broker's hops, not the
# message, so it is neither counted against the header limits nor kept.
_BROKER_HEADERS = ("x-death", "x-first-death", "x-last-death")


def wire_pairs(message: AbstractIncomingMessage) -> list[tuple[str, Any]]:
    """A delivery's headers as (name, value) pairs, minus RabbitMQ's ``x-death``
    family; ``id``/``type`` fall back to the AMQP ``message_id``/``type`` properties."""
    pairs = [
        (k, v) for k, v in (message.headers or {}).items() if not k.startswith(_BROKER_HEADERS)
    ]
    names = {k for k, _ in pairs}
    if "id" not in names and message.message_id and rh.NO_ID not in names:
        pairs.append(("id", message.message_id))
    if "type" not in names and message.type:
        pairs.append(("type", message.type))
    return pairs


async def declare_topology(channel: AbstractChannel, source: RabbitSource, tiers: int) -> None:
    """The work queue (quorum, bound to ``relaybus.events``), its DLQ (quorum), its
    retry queues (durable; an expired copy is dead-lettered to the returns queue) and
    the returns queue ``<queue>.retry.due`` (quorum)."""
    exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(source.queue, durable=True, arguments=QUORUM)
    await queue.bind(exchange, routing_key=source.binding)
    await channel.declare_queue(dlq_name(source.queue), durable=True, arguments=QUORUM)
    if tiers:
        await channel.declare_queue(returns_name(source.queue), durable=True, arguments=QUORUM)
    for n in range(1, tiers + 1):
        await channel.declare_queue(
            retry_name(source.queue, n),
            durable=True,
            arguments={
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": returns_name(source.queue),
            },
        )


class RabbitWorker:
    """Consumes ``handler.source.queue``.

    - Prefetch ``handler.concurrency``; each delivery is acked only after its handler
      transaction committed, or after its retry copy / dead letter was confirmed
      (publisher confirms, ``mandatory`` with returns raised: an unroutable copy is
      an error, never a silent ack).
    - A delivery on the work queue is always attempt 1, whatever its headers say.
      A failed attempt ``n`` is republished to ``<queue>.retry.<n>`` with a
      per-message TTL from the retry policy; on expiry RabbitMQ dead-letters it to
      ``<queue>.retry.due``, which this worker also consumes (attempt from the
      copy's ``x-attempts``, clamped to the policy). The last attempt, or an invalid
      message, goes to ``<queue>.dlq``.
    - If a copy cannot be sent, the delivery is returned to the queue after a
      backoff pause (no hot requeue loop).
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
        self.failures = FailurePath(
            handler.name, self.source.queue, handler.retry.tiers, handler.limits
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._channel: AbstractChannel | None = None
        self._send_backoff = Backoff(initial=0.2, maximum=10.0)

    async def run(self, stop: asyncio.Event) -> None:
        connection: AbstractRobustConnection = await aio_pika.connect_robust(self.url)
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            self._channel = channel
            await channel.set_qos(prefetch_count=self.handler.concurrency)
            await declare_topology(channel, self.source, self.handler.retry.tiers)
            consuming = [(await channel.get_queue(self.source.queue), False)]
            if self.handler.retry.tiers:
                consuming.append((await channel.get_queue(returns_name(self.source.queue)), True))
            tags = []
            for queue, returned in consuming:
                tags.append((queue, await queue.consume(partial(self._on_message, returned))))
            self.ready.set()
            await stop.wait()
            for queue, tag in tags:
                try:
                    await queue.cancel(tag)
                except (AMQPError, OSError) as err:
                    log.warning("%s: cancel failed while stopping: %r", self.handler.name, err)
            if self._tasks:
                # In-flight deliveries get one handler timeout to finish (a breaker may
                # hold them); the rest are cancelled, unacked, and redelivered later.
                _, late = await asyncio.wait(set(self._tasks), timeout=self.handler.timeout)
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
        finally:
            await connection.close()

    async def _on_message(self, returned: bool, message: AbstractIncomingMessage) -> None:
        # Deliveries run concurrently (bounded by the prefetch), not one by one.
        task = asyncio.create_task(self._handle(message, returned))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, message: AbstractIncomingMessage, returned: bool) -> None:
        try:
            copy = await self._route(message, returned)
            if copy is not None:
                await self._publish(copy, message)
            await message.ack()
            self._send_backoff.reset()
        except Exception as err:
            # Could not confirm a retry copy / dead letter (unroutable, nacked, or the
            # channel died). Handler failures never get here: they are verdicts. Give
            # the delivery back after a pause, so a persistent fault cannot spin.
            delay = self._send_backoff.next_delay()
            log.error(
                "%s: %r; delivery returned to the queue in %.1fs",
                self.handler.name,
                err,
                delay,
                exc_info=not isinstance(err, AMQPError | OSError),
            )
            await asyncio.sleep(delay)
            try:
                await message.nack(requeue=True)
            except (AMQPError, OSError, RuntimeError) as nack_err:
                # The channel is gone: RabbitMQ requeues every unacked delivery itself.
                log.warning("%s: nack failed: %r", self.handler.name, nack_err)

    async def _route(self, message: AbstractIncomingMessage, returned: bool) -> Copy | None:
        """Decode, process and decide: the copy to send before acking, if any."""
        handler, queue = self.handler, self.source.queue
        pairs = wire_pairs(message)
        try:
            headers = read_headers(pairs, handler.limits)
        except InvalidMessage as err:
            return self._invalid(message, salvage_headers(pairs, handler.limits), err, 1)
        attempt = 1
        if returned:
            # Back from a retry tier: trust only what relaybus's own copy would carry.
            if headers.get(rh.CONSUMER) != handler.name:
                foreign = InvalidMessage("foreign-retry", f"not a retry copy of {handler.name!r}")
                return self._invalid(message, headers, foreign, 1)
            tiers = handler.retry.tiers
            attempt = (strict_int(headers.get(rh.ATTEMPTS), low=1, high=tiers) or tiers) + 1
        try:
            incoming = decode(
                message.body,
                headers,
                key=message.routing_key or "",
                source=queue,
                attempt=attempt,
                accepted_types=handler.types,
                max_bytes=handler.max_bytes,
                require_object=handler.require_object,
            )
        except InvalidMessage as err:
            return self._invalid(message, headers, err, attempt)
        verdict = await self.processor.process(incoming)
        if verdict.outcome in (Outcome.DONE, Outcome.DUPLICATE):
            return None
        return self.failures.decide(verdict, incoming)

    def _invalid(
        self,
        message: AbstractIncomingMessage,
        headers: dict[str, str],
        err: InvalidMessage,
        attempt: int,
    ) -> Copy:
        self.processor.stats["invalid"] += 1
        log.warning("%s: invalid message: %s", self.handler.name, err)
        return self.failures.invalid(
            message.body, headers, err, attempt=attempt, partition=None, offset=None
        )

    async def _publish(self, copy: Copy, original: AbstractIncomingMessage) -> None:
        """Send ``copy`` via the default exchange; confirmed, and an error if unroutable.

        The AMQP ``message_id`` is the delivery's own; a message without an id is
        marked ``x-relaybus-no-id`` (the client library invents a ``message_id``).
        """
        assert self._channel is not None
        headers = copy.headers if "id" in copy.headers else {**copy.headers, rh.NO_ID: "1"}
        amqp = aio_pika.Message(
            body=copy.body,
            headers=dict[str, Any](headers),
            message_id=original.message_id,
            type=original.type,
            content_type=original.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            expiration=max(copy.delay, 0.001) if copy.kind is CopyKind.RETRY else None,
        )
        await self._channel.default_exchange.publish(
            amqp, routing_key=copy.destination, mandatory=True
        )
