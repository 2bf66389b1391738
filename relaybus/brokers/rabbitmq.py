"""RabbitMQ adapter (aio-pika): topic exchange ``relaybus.events``, confirms, mandatory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from aio_pika.exceptions import AMQPError, DeliveryError

from relaybus.brokers.publisher import DEFERRED, PUBLISHED, Outcome, PublishError
from relaybus.brokers.stalls import Stall
from relaybus.message import CONTENT_TYPE, Message

EXCHANGE = "relaybus.events"


class RabbitPublisher:
    """Publishes persistent messages to the durable topic exchange, routing key = type.

    Confirms are pipelined across keys (see ``publish``). ``mandatory`` is set, so a
    message no queue is bound for comes back and is reported as a permanent error
    instead of vanishing. A lost connection raises ``PublishError``; the next call
    reconnects.
    """

    name = "rabbitmq"

    def __init__(self, url: str, exchange: str = EXCHANGE, confirm_timeout: float = 15.0) -> None:
        self._url = url
        self._exchange_name = exchange
        self._confirm_timeout = confirm_timeout
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        # Callers publish concurrently; connect at most once at a time.
        self._connect_lock = asyncio.Lock()

    async def start(self) -> None:
        """Connect and declare the exchange; a no-op while a healthy connection exists."""
        async with self._connect_lock:
            if self._connection is not None and not self._connection.is_closed:
                return
            await self._connect()

    async def _connect(self) -> None:
        try:
            self._connection = await aio_pika.connect(self._url, timeout=10)
            self._channel = await self._connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            self._exchange = await self._channel.declare_exchange(
                self._exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
            )
        except (TimeoutError, AMQPError, OSError) as err:
            await self._close()  # the lock is held by start()
            raise PublishError(f"rabbitmq unavailable: {err!r}") from err

    async def stop(self) -> None:
        async with self._connect_lock:
            await self._close()

    async def _close(self) -> None:
        connection, self._connection, self._exchange = self._connection, None, None
        if connection is not None and not connection.is_closed:
            # Already broken connections raise on close; nothing is left to release then.
            with contextlib.suppress(AMQPError, OSError, RuntimeError):
                await connection.close()

    def stalls(self) -> list[Stall]:
        """None tracked: one channel's confirms come in order, so a queue that stops
        confirming holds back the whole call until ``confirm_timeout`` (then
        ``PublishError``; the relay backs off and republishes)."""
        return []

    async def publish(self, messages: Sequence[Message]) -> list[Outcome]:
        """Publish in waves: wave k holds the k-th message of every key.

        Within a wave confirms are pipelined; the next wave starts only after every
        confirm (or return) of this one arrived. So when a message comes back
        unroutable, later messages of its key have not been sent: they are reported
        ``deferred`` and per-key order survives the failure.
        """
        await self.start()  # reconnects if the last connection broke
        exchange = self._exchange
        assert exchange is not None  # start() succeeded or raised
        outcomes: list[Outcome] = [DEFERRED] * len(messages)
        refused: set[str] = set()
        for wave in _waves(messages):
            wave = [i for i in wave if messages[i].aggregateid not in refused]
            pending = [
                asyncio.ensure_future(
                    exchange.publish(
                        _to_amqp(messages[i]),
                        routing_key=messages[i].type,
                        mandatory=True,
                        timeout=self._confirm_timeout,
                    )
                )
                for i in wave
            ]
            results = await asyncio.gather(*pending, return_exceptions=True)
            for i, result in zip(wave, results, strict=True):
                if isinstance(result, DeliveryError):
                    outcomes[i] = Outcome(error=f"rabbitmq returned it (unroutable): {result}")
                    refused.add(messages[i].aggregateid)
                elif isinstance(result, BaseException):
                    await self.stop()  # the next call reconnects
                    raise PublishError(f"rabbitmq publish failed: {result!r}") from result
                else:
                    outcomes[i] = PUBLISHED
        return outcomes


def _waves(messages: Sequence[Message]) -> list[list[int]]:
    """Indexes of ``messages`` grouped so wave k has each key's k-th message, in order."""
    seen: dict[str, int] = {}
    waves: list[list[int]] = []
    for i, m in enumerate(messages):
        k = seen.get(m.aggregateid, 0)
        seen[m.aggregateid] = k + 1
        if k == len(waves):
            waves.append([])
        waves[k].append(i)
    return waves


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
