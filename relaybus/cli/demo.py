"""``relaybus demo``: one event through Kafka and RabbitMQ, and a report of what arrived."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import typer
from rich.table import Table

from relaybus.brokers.kafka import KafkaPublisher, default_topic
from relaybus.brokers.kafka_admin import ensure_topic
from relaybus.brokers.publisher import PublishError
from relaybus.brokers.rabbitmq import RabbitPublisher
from relaybus.brokers.taps import Received, kafka_tap, rabbit_tap
from relaybus.cli.console import make_console
from relaybus.message import Message
from relaybus.settings import Settings


async def _round_trip(settings: Settings, message: Message, timeout: float) -> list[Received]:
    topic = default_topic(message)
    await ensure_topic(settings.kafka_bootstrap, topic)
    kafka = KafkaPublisher(settings.kafka_bootstrap)
    rabbit = RabbitPublisher(settings.rabbitmq_url)
    async with (
        kafka_tap(settings.kafka_bootstrap, topic) as from_kafka,
        rabbit_tap(settings.rabbitmq_url, f"{message.aggregatetype}.#") as from_rabbit,
    ):
        for publisher in (kafka, rabbit):
            await publisher.start()
            try:
                await publisher.publish([message])
            finally:
                await publisher.stop()
        return [
            await asyncio.wait_for(from_kafka.get(), timeout),
            await asyncio.wait_for(from_rabbit.get(), timeout),
        ]


def demo(
    timeout: float = typer.Option(30.0, help="Seconds to wait for each message to arrive."),
) -> None:
    """Publish one event to Kafka and RabbitMQ and print what each delivered.

    Example: relaybus demo
    """
    settings = Settings()
    message = Message.from_data(
        "demo.ping", "demo", "demo-1", {"hello": "relaybus", "at": datetime.now(UTC).isoformat()}
    )
    console = make_console()
    try:
        arrived = asyncio.run(_round_trip(settings, message, timeout))
    except (PublishError, OSError, TimeoutError) as err:
        console.print(f"[red]demo failed: {err!r}[/red] (is the stack up? relaybus stack up)")
        raise typer.Exit(1) from None
    table = Table(title=f"message {message.id} as delivered")
    for col in ("broker", "from", "key / routing key", "headers", "payload"):
        table.add_column(col, overflow="fold")
    for r in arrived:
        headers = ", ".join(f"{k}={v}" for k, v in sorted(r.headers.items()))
        table.add_row(r.broker, r.source, r.key or "", headers, r.body.decode())
    console.print(table)
    same = all(
        r.body == message.payload and r.headers.get("id") == str(message.id) for r in arrived
    )
    console.print("payload and id identical on both brokers" if same else "[red]mismatch[/red]")
    if not same:
        raise typer.Exit(1)
