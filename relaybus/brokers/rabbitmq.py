"""RabbitMQ adapter (aio-pika): topic exchange ``relaybus.events``, confirms, mandatory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from aio_pika.exceptions import AMQPError, DeliveryError

from relaybus.brokers.publisher import PUBLISHED, Outcome, PublishError
from relaybus.message import CONTENT_TYPE, Message

EXCHANGE = "relaybus.events"


class RabbitPublisher:
    """Publishes persistent messages to the durable topic exchange, routing key = type.

    Confirms are pipelined: a call's messages are written in order, then every
    confirm awaited. ``mandatory`` is set, so a message no queue is bound for comes
    back and is reported as a permanent error instead of vanishing. A lost
    connection raises ``PublishError``; the next call reconnects.
    """

    name = "rabbitmq"

    def __init__(self, url: str, exchange: str = EXCHANGE, confirm_timeout: float = 15.0) -> None:
        self._url = url
        self._exchange_name = exchange
        self._confirm_timeout = confirm_timeout
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None

    async def start(self) -> None:
        try:
            self._connection = await aio_pika.connect(self._url, timeout=10)
            self._channel = await self._connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            self._exchange = await self._channel.declare_exchange(
                self._exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
            )
        except (TimeoutError, AMQPError, OSError) as err:
            await self.stop()
            raise PublishError(f"rabbitmq unavailable: {err!r}") from err

    async def stop(self) -> None:
        connection, self._connection, self._exchange = self._connection, None, None
        if connection is not None and not connection.is_closed:
            # Already broken connections raise on close; nothing is left to release then.
            with contextlib.suppress(AMQPError, OSError, RuntimeError):
                await connection.close()

    async def publish(self, messages: Sequence[Message]) -> list[Outcome]:
        if self._exchange is None or self._connection is None or self._connection.is_closed:
            await self.stop()
            await self.start()
        exchange = self._exchange
        assert exchange is not None  # start() succeeded or raised
        pending = [
            asyncio.ensure_future(
                exchange.publish(
                    _to_amqp(m), routing_key=m.type, mandatory=True, timeout=self._confirm_timeout
                )
            )
            for m in messages
        ]
        results = await asyncio.gather(*pending, return_exceptions=True)
        outcomes: list[Outcome] = []
        for result in results:
            if isinstance(result, DeliveryError):
                outcomes.append(Outcome(error=f"rabbitmq returned it (unroutable): {result}"))
            elif isinstance(result, BaseException):
                await self.stop()
                raise PublishError(f"rabbitmq publish failed: {result!r}") from result
            else:
                outcomes.append(PUBLISHED)
        return outcomes


def _to_amqp(m: Message) -> aio_pika.Message:
    return aio_pika.Message(
        body=m.payload,
        message_id=str(m.id),
        type=m.type,
        content_type=CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        timestamp=m.occurred_at,
        correlation_id=m.correlation_id,
        headers=dict(m.headers()),
    )
