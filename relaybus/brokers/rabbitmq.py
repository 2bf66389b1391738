"""RabbitMQ adapter (aio-pika): topic exchange ``relaybus.events``, confirms, mandatory."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from aio_pika.exceptions import AMQPError, DeliveryError
from aio_pika.exceptions import PublishError as PikaPublishError

from relaybus.brokers.publisher import PublishError
from relaybus.message import CONTENT_TYPE, Message

EXCHANGE = "relaybus.events"


class RabbitPublisher:
    """Publishes persistent messages to the durable topic exchange, routing key = type.

    Confirms are pipelined: a batch is written in order, then every confirm awaited.
    ``mandatory`` is set, so a message no queue is bound for comes back and raises a
    permanent ``PublishError`` instead of vanishing.
    """

    name = "rabbitmq"

    def __init__(self, url: str, exchange: str = EXCHANGE) -> None:
        self._url = url
        self._exchange_name = exchange
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None

    async def start(self) -> None:
        try:
            self._connection = await aio_pika.connect_robust(self._url)
            self._channel = await self._connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            self._exchange = await self._channel.declare_exchange(
                self._exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
            )
        except (AMQPError, OSError) as err:
            raise PublishError(f"rabbitmq unavailable: {err!r}", permanent=False) from err

    async def stop(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def publish(self, messages: Sequence[Message]) -> None:
        if self._exchange is None:
            raise PublishError("rabbitmq publisher not started", permanent=False)
        exchange = self._exchange
        pending = [
            asyncio.ensure_future(exchange.publish(_to_amqp(m), routing_key=m.type, mandatory=True))
            for m in messages
        ]
        results = await asyncio.gather(*pending, return_exceptions=True)
        for result in results:
            if isinstance(result, DeliveryError):
                raise PublishError(f"rabbitmq returned the message: {result}", permanent=True)
            if isinstance(result, (AMQPError, PikaPublishError, OSError, asyncio.TimeoutError)):
                raise PublishError(f"rabbitmq publish failed: {result!r}", permanent=False)
            if isinstance(result, BaseException):
                raise result


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
