"""The consumer the latency benchmark runs (``relaybus worker bench.latency_app:app``):
an inbox handler that records, in its transaction, when it applied each event.

Configured by ``RELAYBUS_BENCH_BROKER`` (kafka | rabbitmq), ``RELAYBUS_BENCH_SOURCE``
(topic or queue), ``RELAYBUS_BENCH_BINDING`` (RabbitMQ routing pattern).
"""

from __future__ import annotations

import os
import time

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from relaybus.consumers.app import ConsumerApp
from relaybus.consumers.incoming import Incoming

EVENT = "bench.latency"
HANDLER = "bench-latency"
TABLE_DDL = (
    "CREATE TABLE IF NOT EXISTS bench_latency (run text NOT NULL, i integer NOT NULL, "
    "intended double precision NOT NULL, applied double precision NOT NULL)"
)
_RECORD = text(
    "INSERT INTO bench_latency (run, i, intended, applied) VALUES (:run, :i, :t, :applied)"
)


async def record(message: Incoming, session: AsyncSession | None) -> None:
    """The effect: one row with the event's scheduled time and now (this machine's clock)."""
    assert session is not None
    data = message.payload if isinstance(message.payload, dict) else {}
    await session.execute(
        _RECORD,
        {"run": data.get("run", ""), "i": int(data.get("i", -1)), "t": float(data.get("t", 0)),
         "applied": time.time()},
    )  # fmt: skip


def app() -> ConsumerApp:
    env = os.environ
    consumers = ConsumerApp("bench-latency")
    source = env["RELAYBUS_BENCH_SOURCE"]
    if env.get("RELAYBUS_BENCH_BROKER", "kafka") == "kafka":
        consumers.kafka(source, group=f"{source}-latency", name=HANDLER, types={EVENT})(record)
    else:
        binding = env.get("RELAYBUS_BENCH_BINDING", EVENT)
        consumers.rabbitmq(source, binding=binding, name=HANDLER, types={EVENT})(record)
    return consumers
