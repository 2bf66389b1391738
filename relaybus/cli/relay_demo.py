"""``relaybus relay-demo``: events through the outbox and relay to both brokers, with a report."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import typer
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncSession

from relaybus.brokers.kafka_admin import (
    end_offsets,
    ensure_topic,
    produce_records,
    start_group_at,
)
from relaybus.brokers.publisher import PublishError
from relaybus.brokers.taps import Received, kafka_tap, rabbit_tap
from relaybus.cli.relay import build_publishers
from relaybus.consumers.app import ConsumerApp
from relaybus.consumers.incoming import Incoming
from relaybus.consumers.worker import Worker
from relaybus.db import create_engine, session_factory
from relaybus.ids import uuid7
from relaybus.locks.postgres import PostgresLock
from relaybus.outbox.admin import OutboxAdmin
from relaybus.outbox.metrics import RelayMetrics
from relaybus.outbox.notify import OutboxListener
from relaybus.outbox.relay import Relay, RelayConfig
from relaybus.outbox.routing import Router
from relaybus.outbox.store import PostgresOutboxStore
from relaybus.outbox.writer import Outbox
from relaybus.settings import Route, Settings
from relaybus.terminal import make_console

AGGREGATE = "demo"
TOPIC = f"outbox.event.{AGGREGATE}"


@dataclass
class BrokerReport:
    broker: str
    received: int
    unique: int
    in_key_order: bool
    p50_ms: float
    p99_ms: float


def _report(broker: str, got: list[tuple[Received, float]]) -> BrokerReport:
    by_key: dict[str, list[int]] = defaultdict(list)
    latencies = []
    for r, arrived in got:
        by_key[r.headers["aggregateid"]].append(json.loads(r.body)["n"])
        sent = datetime.fromisoformat(r.headers["occurred_at"].replace("Z", "+00:00"))
        latencies.append((arrived - sent.timestamp()) * 1000)
    latencies.sort()
    return BrokerReport(
        broker,
        len(got),
        len({r.headers["id"] for r, _ in got}),
        all(ns == sorted(ns) for ns in by_key.values()),
        statistics.median(latencies),
        latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    )


async def _collect(
    queue: asyncio.Queue[Received], ids: set[str], out: list[tuple[Received, float]]
) -> None:
    seen: set[str] = set()
    while not ids <= seen:
        r = await queue.get()
        if r.headers.get("id") in ids:
            out.append((r, time.time()))
            seen.add(r.headers["id"])


@dataclass
class ConsumerReport:
    applied: int
    duplicates: int
    max_effects_per_message: int


async def _consume_twice(
    settings: Settings, start: dict[int, int], records: list[Received], timeout: float
) -> ConsumerReport:
    """An inbox consumer reads this run's events (from ``start``); then every event is
    delivered again (as a replay would) and must be skipped as a duplicate."""
    effects: Counter[str] = Counter()
    app = ConsumerApp("demo")

    async def apply(message: Incoming, session: AsyncSession | None) -> None:
        effects[str(message.id)] += 1  # the effect; the inbox row shares its transaction

    name = f"demo-inbox-{uuid7().hex[-6:]}"  # a fresh group, started at this run's offsets
    app.kafka(TOPIC, group=name, name=name)(apply)
    await start_group_at(settings.kafka, name, TOPIC, start)
    worker = Worker(app, settings)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    stats = worker.runners[0].processor.stats
    wanted = {r.headers["id"] for r in records}

    async def until(condition: Callable[[], bool]) -> None:
        # The worker's counters have no change notification: poll them.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(until(lambda: wanted <= set(effects)), timeout)
        await produce_records(
            settings.kafka,
            TOPIC,
            [(r.key.encode() if r.key else None, r.body, r.headers) for r in records],
        )
        await asyncio.wait_for(until(lambda: stats["duplicate"] >= len(records)), timeout)
    finally:
        stop.set()
        await task
    return ConsumerReport(
        sum(1 for i in wanted if effects[i]), stats["duplicate"], max(effects.values())
    )


async def run_demo(settings: Settings, events: int, keys: int, timeout: float) -> None:
    """Write ``events`` through the outbox, relay them in-process, read both brokers back."""
    console = make_console()
    engine = create_engine(settings.database_url)
    await ensure_topic(settings.kafka, TOPIC, partitions=6)
    first_offsets = await end_offsets(settings.kafka, TOPIC)  # this run follows
    relay = Relay(
        PostgresOutboxStore(engine),
        PostgresLock(engine),
        build_publishers(settings, {"kafka", "rabbitmq"}),
        Router([Route(pattern="demo.*", brokers=["kafka", "rabbitmq"])]),
        RelayConfig(partitions=settings.outbox_partitions, instance=f"demo-{uuid7().hex[-6:]}"),
        RelayMetrics(),
    )
    stop = asyncio.Event()
    from_kafka: list[tuple[Received, float]] = []
    from_rabbit: list[tuple[Received, float]] = []
    try:
        async with (
            kafka_tap(settings.kafka, TOPIC) as kq,
            rabbit_tap(settings.rabbitmq, "demo.#") as rq,
        ):
            listener = asyncio.create_task(OutboxListener(settings.database_url, relay.wake).run())
            relay_task = asyncio.create_task(relay.run(stop))
            outbox = Outbox.from_settings(settings)
            sessions = session_factory(engine)
            ids: set[str] = set()
            started = time.monotonic()
            for start in range(0, events, 20):  # 20 events per business transaction
                async with sessions() as session, session.begin():
                    for n in range(start, min(events, start + 20)):
                        message_id = await outbox.enqueue(
                            session,
                            aggregate_type=AGGREGATE,
                            aggregate_id=f"order-{n % keys}",
                            type="demo.order.placed",
                            payload={"n": n, "sku": f"sku-{n % 7}", "qty": 1 + n % 3},
                        )
                        ids.add(str(message_id))
            console.print(f"committed {events} events through the outbox over {keys} keys")
            await asyncio.wait_for(
                asyncio.gather(_collect(kq, ids, from_kafka), _collect(rq, ids, from_rabbit)),
                timeout,
            )
            elapsed = time.monotonic() - started
            stop.set()
            await relay_task
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
        status = await OutboxAdmin(engine).status()
        consumed = await _consume_twice(
            settings, first_offsets, [r for r, _ in from_kafka], timeout
        )
    finally:
        stop.set()
        await engine.dispose()

    table = Table(title=f"relaybus demo: {events} events, {elapsed:.2f}s end to end")
    for col in ("broker", "received", "unique ids", "per-key order", "p50 ms", "p99 ms"):
        table.add_column(col, justify="right")
    for rep in (_report("kafka", from_kafka), _report("rabbitmq", from_rabbit)):
        table.add_row(
            rep.broker,
            str(rep.received),
            str(rep.unique),
            "kept" if rep.in_key_order else "[red]BROKEN[/red]",
            f"{rep.p50_ms:.1f}",
            f"{rep.p99_ms:.1f}",
        )
    console.print(table)
    console.print(
        f"outbox now: {status.pending} pending, {status.failed} failed, archived {status.archived}"
    )
    console.print(
        f"inbox consumer on {TOPIC}: {consumed.applied} applied; every event delivered again: "
        f"{consumed.duplicates} duplicates skipped; at most "
        f"{consumed.max_effects_per_message} effect per message"
    )


def relay_demo(
    events: int = typer.Option(200, min=1, help="How many events to write."),
    keys: int = typer.Option(10, min=1, help="Distinct aggregate ids (per-key order is checked)."),
    timeout: float = typer.Option(60.0, help="Seconds to wait for every event to arrive."),
) -> None:
    """Write events through the outbox, relay them to Kafka and RabbitMQ, report what
    arrived; then consume them with an inbox consumer, deliver them all again, and show
    that each was applied once.

    Example: relaybus relay-demo --events 500 --keys 20
    """
    try:
        asyncio.run(run_demo(Settings(), events, keys, timeout))
    except (PublishError, OSError, TimeoutError) as err:
        make_console(stderr=True).print(
            f"[red]demo failed: {err!r}[/red] (is the stack up and migrated? "
            "relaybus stack up && relaybus db upgrade)"
        )
        raise typer.Exit(1) from None
