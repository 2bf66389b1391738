"""Producers that are not relaybus: kcat for Kafka, the management HTTP API and raw
AMQP for RabbitMQ. The trust-boundary tests send hostile records through them."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika

from relaybus.brokers.rabbitmq import EXCHANGE

Header = tuple[bytes, bytes]


@dataclass(frozen=True)
class Hostile:
    """One record as any client may write it: raw body, raw header pairs (repeats and
    non-UTF-8 allowed), and what relaybus must do with it."""

    name: str
    body: bytes
    headers: list[Header] = field(default_factory=list)
    reason: str | None = None  # the dead-letter reason; None = applied
    compression: str | None = None  # kcat -z codec
    kafka_only: bool = False


def kcat_produce(
    bootstrap: str,
    topic: str,
    key: bytes,
    bodies: Sequence[bytes],
    headers: Sequence[Header] = (),
    *,
    partition: int = 0,
    compression: str | None = None,
) -> None:
    """``kcat -P``: each body one record (from a file, so any bytes), all with ``headers``
    and ``key``, to one ``partition`` in order; compressed with ``compression``."""
    with tempfile.TemporaryDirectory() as folder:
        files = []
        for i, body in enumerate(bodies):
            path = Path(folder) / f"{i:05d}"
            path.write_bytes(body)
            files.append(str(path).encode())
        argv: list[bytes] = [b"kcat", b"-P", b"-b", bootstrap.encode(), b"-t", topic.encode()]
        argv += [b"-p", str(partition).encode(), b"-k", key]
        for name, value in headers:
            argv += [b"-H", name + b"=" + value]
        if compression:
            argv += [b"-z", compression.encode()]
        proc = subprocess.run([*argv, *files], capture_output=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"kcat failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}"
        )


def management_publish(
    management_url: str,
    routing_key: str,
    body: bytes,
    headers: dict[str, Any],
    properties: dict[str, Any] | None = None,
    exchange: str = EXCHANGE,
) -> None:
    """Publish through the management HTTP API (``POST …/exchanges/%2F/<x>/publish``);
    ``exchange="amq.default"`` publishes straight to the queue named ``routing_key``."""
    parts = urllib.parse.urlsplit(management_url)
    url = f"{parts.scheme}://{parts.hostname}:{parts.port}/api/exchanges/%2F/{exchange}/publish"
    document = {
        "properties": {"headers": headers, "delivery_mode": 2, **(properties or {})},
        "routing_key": routing_key,
        "payload": base64.b64encode(body).decode(),
        "payload_encoding": "base64",
    }
    request = urllib.request.Request(url, data=json.dumps(document).encode(), method="POST")
    token = base64.b64encode(f"{parts.username}:{parts.password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.load(response)
    if not answer.get("routed"):
        raise RuntimeError(f"management publish to {routing_key!r} was not routed: {answer}")


async def raw_amqp_publish(
    url: str, routing_key: str, body: bytes, headers: dict[str, Any], message_id: str | None
) -> None:
    """A raw AMQP publish (bytes header values go on the wire as AMQP byte arrays)."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(EXCHANGE)
        await exchange.publish(
            aio_pika.Message(body=body, headers=headers, message_id=message_id),
            routing_key=routing_key,
        )
    finally:
        await connection.close()


async def rabbit_foreign_send(
    url: str, management_url: str, routing_key: str, record: Hostile
) -> None:
    """Send ``record`` to RabbitMQ: through the management API when its headers are
    text without repeats, else as a raw AMQP publish with byte values."""
    names = [n for n, _ in record.headers]
    try:
        text_headers = {n.decode(): v.decode() for n, v in record.headers}
    except UnicodeDecodeError:
        text_headers = None
    if text_headers is not None and len(set(names)) == len(names):
        await asyncio.to_thread(
            management_publish, management_url, routing_key, record.body, text_headers
        )
        return
    binary: dict[str, Any] = {}
    for name, value in record.headers:
        try:
            binary[name.decode()] = value.decode()
        except UnicodeDecodeError:
            binary[name.decode(errors="replace")] = bytearray(value)  # an AMQP byte array
    await raw_amqp_publish(url, routing_key, record.body, binary, None)
