"""Relay throughput vs raw clients, outbox write cost, faststream-outbox and pgqueuer as peers.

Run (stack up, database migrated):  python -m bench.relay_bench
Writes bench/results/relay.json and bench/results/relay.md. Not a test: numbers are
medians of several rounds on whatever machine runs it, compared only with baselines
measured in the same run on the same stack.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import aio_pika
from aiokafka import AIOKafkaProducer
from sqlalchemy import BigInteger, Insert, MetaData, Text, bindparam, insert, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bench.cpu import SERVERS, cpu_used
from bench.db_inserts import pgbench_script, pgbench_tps
from bench.report import Comparison, Series, amend, write
from relaybus.brokers.kafka import KafkaPublisher
from relaybus.brokers.kafka_admin import ensure_topic
from relaybus.brokers.publisher import Publisher
from relaybus.brokers.rabbitmq import EXCHANGE, RabbitPublisher
from relaybus.db import create_engine, session_factory
from relaybus.locks.postgres import PostgresLock
from relaybus.message import Message
from relaybus.outbox.metrics import RelayMetrics
from relaybus.outbox.relay import Relay, RelayConfig
from relaybus.outbox.routing import Router
from relaybus.outbox.store import PostgresOutboxStore
from relaybus.outbox.writer import Outbox
from relaybus.settings import Route, Settings
from relaybus.snowflake import Snowflake

PAD = "x" * 180  # with {"n":…,"pad":…} a payload is ~200 bytes
PARTITIONS = 16


def payload(n: int) -> bytes:
    return json.dumps({"n": n, "pad": PAD}, separators=(",", ":")).encode()


def message(agg: str, n: int, keys: int) -> Message:
    return Message(
        type="bench.event", aggregatetype=agg, aggregateid=f"k{n % keys}", payload=payload(n)
    )


def uuid7_sql(millis: str = "floor(extract(epoch FROM clock_timestamp()) * 1000)") -> str:
    """SQL for a UUIDv7-shaped id (PostgreSQL 15 has no ``uuidv7()``): ``millis`` (an
    SQL expression, epoch milliseconds) in the first 48 bits, version 7, random rest.
    Time-ordered like the ids ``Outbox.enqueue`` makes, so indexes on ``id`` see
    the same right-hand inserts as in production."""
    return (
        # gen_random_uuid() is version 4 (0100): setting bits 52 and 53 makes it 0111.
        "encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) placing "
        f"substring(int8send(CAST({millis} AS bigint)) from 3) from 1 for 6), "
        "52, 1), 53, 1), 'hex')::uuid"
    )


async def prefill_outbox(
    engine: AsyncEngine,
    agg: str,
    events: int,
    keys: int,
    partitions: int = PARTITIONS,
    id_sql: str = "gen_random_uuid()",
) -> None:
    """Bulk-load ``events`` pending rows over ``keys`` keys, partitioned by key hash
    over ``partitions`` (the load is not what is measured); ids made by ``id_sql``."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                f"""
                INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload, timestamp,
                                    headers, partition)
                SELECT {id_sql}, :agg, 'k' || (g % :keys), 'bench.event',
                       jsonb_build_object('n', g, 'pad', CAST(:pad AS text)),
                       now() AT TIME ZONE 'utc',
                       '{{}}'::jsonb, abs(hashtext('k' || (g % :keys))) % :parts
                  FROM generate_series(1, :n) AS g
                """
            ),
            {"agg": agg, "keys": keys, "pad": PAD, "parts": partitions, "n": events},
        )


async def wait_empty(engine: AsyncEngine, sql: str, params: dict[str, object]) -> None:
    while True:
        async with engine.connect() as conn:
            if not (await conn.execute(text(sql), params)).scalar():
                return
        await asyncio.sleep(0.05)


async def relay_drain(
    engine: AsyncEngine,
    agg: str,
    publishers: dict[str, Publisher],
    broker: str,
    batch_size: int = 1000,
) -> float:
    """Seconds for an in-process relay to empty the outbox of ``agg``."""
    relay = Relay(
        PostgresOutboxStore(engine, archive=True),
        PostgresLock(engine),
        publishers,
        Router([Route(pattern="*", brokers=[broker])]),  # type: ignore[list-item]
        RelayConfig(
            partitions=PARTITIONS,
            batch_size=1000,
            lease_ttl=10,
            poll_interval=0.2,
            instance=f"bench-{uuid.uuid4().hex[:6]}",
        ),
        RelayMetrics(),
    )
    stop = asyncio.Event()
    started = time.monotonic()
    task = asyncio.create_task(relay.run(stop))
    await wait_empty(engine, "SELECT 1 FROM outbox WHERE aggregatetype = :a LIMIT 1", {"a": agg})
    elapsed = time.monotonic() - started
    stop.set()
    await task
    return elapsed


async def raw_kafka(bootstrap: str, topic: str, events: int, keys: int) -> float:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=256 * 1024,
    )
    await producer.start()
    try:
        started = time.monotonic()
        pending = []
        for n in range(events):
            m = message("raw", n, keys)
            headers = [(k, v.encode()) for k, v in m.headers().items()]
            pending.append(
                await producer.send(topic, m.payload, key=m.aggregateid.encode(), headers=headers)
            )
            if len(pending) >= 10_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        return time.monotonic() - started
    finally:
        await producer.stop()


async def raw_rabbit(url: str, events: int, keys: int, window: int = 1000) -> float:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(
            EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        started = time.monotonic()
        for start in range(0, events, window):
            batch = []
            for n in range(start, min(events, start + window)):
                m = message("raw", n, keys)
                batch.append(
                    exchange.publish(
                        aio_pika.Message(
                            m.payload,
                            message_id=str(m.id),
                            type=m.type,
                            headers=dict(m.headers()),
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        ),
                        routing_key=m.type,
                        mandatory=True,
                    )
                )
            await asyncio.gather(*batch)
        return time.monotonic() - started
    finally:
        await connection.close()


async def rabbit_sink(url: str, purge: bool = False) -> None:
    """A durable queue bound to bench.# so mandatory publishes are routable."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue("bench.sink", durable=True)
        await queue.bind(exchange, routing_key="bench.#")
        if purge:
            await queue.purge()
    finally:
        await connection.close()


class BenchBase(DeclarativeBase):
    """Models of the benchmark only (kept off relaybus's migrated metadata)."""


class BenchOrder(BenchBase):
    __tablename__ = "bench_orders"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    customer: Mapped[str] = mapped_column(Text)
    total: Mapped[int] = mapped_column(BigInteger)


INSERT_STYLES = {
    # label: (how the business row is written, how its event is added, target)
    "one statement (Outbox.write)": ("core", "write", 0.9),
    "separate statement (Outbox.enqueue)": ("core", "enqueue", None),
    "ORM model + Outbox.enqueue": ("orm", "enqueue", None),
    # Diagnostic: Outbox.write's client work with the server's event work taken away.
    "one statement, event INSERT replaced by an unread SELECT (client's share)": (
        "core",
        "client-share",
        None,
    ),
}


class ClientShareOutbox(Outbox):
    """``Outbox.write``'s client work without the server's work for the event.

    Same statement shape and bind parameters, but the event CTE is a SELECT nobody
    reads, which PostgreSQL skips. Writes no event: it only shows how much of the
    insert ratio is the client's own cost (the rest is PostgreSQL's event work
    competing with the client for the machine's CPUs).
    """

    def __init__(self) -> None:
        super().__init__()
        unread = (
            "SELECT CAST(:rb_id AS uuid) AS id, :rb_aggregatetype AS aggregatetype, "
            ":rb_aggregateid AS aggregateid, :rb_type AS type, "
            "CAST(CAST(:rb_payload AS text) AS jsonb) AS payload, "
            "CAST(:rb_partition AS smallint) AS partition"
        )
        with_headers = unread + ", CAST(CAST(:rb_headers AS text) AS jsonb) AS headers"
        self._event_ctes = (  # the writer's private CTE pair, swapped for this diagnostic
            text(unread).columns().cte("rb_outbox_event"),
            text(with_headers).columns().cte("rb_outbox_event"),
        )


ORDER_AGGREGATE, ORDER_EVENT = "benchorder", "bench.order.created"


def order_insert() -> Insert:
    """The business INSERT, built once and executed with fresh values (as
    ``session.execute(statement, row)``)."""
    return insert(BenchOrder.__table__).values(
        id=bindparam("id"), customer=bindparam("customer"), total=bindparam("total")
    )


def order_payload(order_id: int) -> dict[str, Any]:
    return {"id": order_id, "pad": PAD[:150]}


async def inserts(
    engine: AsyncEngine, transactions: int, style: str, with_outbox: bool, writers: int
) -> float:
    """Seconds for ``writers`` concurrent tasks to commit ``transactions`` order inserts.

    Order ids are snowflake ids made by the client (as the shop's are), so the event
    can name its key before the row exists. ``style``: ``core`` inserts with one Core
    INSERT statement, ``orm`` flushes a mapped object; with the outbox the event is
    added by ``Outbox.write`` (same statement) or ``Outbox.enqueue`` (its own).
    """
    row_style, event_style, _ = INSERT_STYLES[style]
    outbox = ClientShareOutbox() if event_style == "client-share" else Outbox()
    sessions = session_factory(engine)
    ids = Snowflake(worker_id=1)
    statement = order_insert()

    def event(order_id: int) -> dict[str, Any]:
        return {
            "aggregate_type": ORDER_AGGREGATE,
            "aggregate_id": str(order_id),
            "type": ORDER_EVENT,
            "payload": order_payload(order_id),
        }

    async def writer(w: int) -> None:
        for i in range(transactions // writers):
            order_id = ids.next_id()
            async with sessions() as session, session.begin():
                if row_style == "orm":
                    session.add(BenchOrder(id=order_id, customer=f"c{w}", total=i))
                    await session.flush()
                    if with_outbox:
                        await outbox.enqueue(session, **event(order_id))
                    continue
                row = {"id": order_id, "customer": f"c{w}", "total": i}
                if not with_outbox:  # the baseline does no event work at all
                    await session.execute(statement, row)
                elif event_style in ("write", "client-share"):
                    await outbox.write(session, statement, row, **event(order_id))
                else:
                    await session.execute(statement, row)
                    await outbox.enqueue(session, **event(order_id))

    started = time.monotonic()
    await asyncio.gather(*(writer(w) for w in range(writers)))
    return time.monotonic() - started


async def create_insert_tables(engine: AsyncEngine) -> None:
    """The table the insert rounds write (the benchmark's own, not migrated)."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "CREATE TABLE IF NOT EXISTS bench_orders (id bigint PRIMARY KEY, "
                "customer text NOT NULL, total numeric NOT NULL, "
                "created_at timestamptz NOT NULL DEFAULT now())"
            )
        )


async def reset_insert_tables(engine: AsyncEngine) -> None:
    """Start every insert round from the same state, as pgbench does: bench rows gone,
    both tables vacuumed. Otherwise each round inherits the last one's rows and dead
    tuples, and autovacuum wakes up mid-round on whichever table crossed its threshold.
    """
    async with engine.begin() as conn:
        await conn.execute(text("TRUNCATE bench_orders"))
        await conn.execute(
            text("DELETE FROM outbox WHERE aggregatetype = :a"), {"a": ORDER_AGGREGATE}
        )
    async with engine.connect() as conn:
        autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await autocommit.execute(text("VACUUM (ANALYZE) outbox, bench_orders"))


async def faststream_outbox_drain(
    engine: AsyncEngine, bootstrap: str, topic: str, events: int
) -> float:
    """Seconds for faststream-outbox's relay (outbox subscriber -> Kafka publisher)."""
    from faststream.kafka import KafkaBroker
    from faststream_outbox import OutboxBroker, make_outbox_table

    metadata = MetaData()
    table = make_outbox_table(metadata, table_name="fso_outbox")
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
        await conn.execute(text("TRUNCATE fso_outbox"))
        await conn.execute(
            text(
                "INSERT INTO fso_outbox (queue, payload, headers) "
                "SELECT 'bench', convert_to(json_build_object('n', g, "
                "'pad', CAST(:pad AS text))::text, 'UTF8'), "
                '\'{"content-type": "application/json"}\'::jsonb '
                "FROM generate_series(1, :n) g"
            ),
            {"pad": PAD, "n": events},
        )
    # No per-message logging (relaybus's relay logs none either).
    outbox_broker = OutboxBroker(engine, outbox_table=table, logger=None)
    kafka = KafkaBroker(bootstrap, acks="all", enable_idempotence=True, logger=None)
    publisher = kafka.publisher(topic)

    @publisher
    @outbox_broker.subscriber(
        "bench",
        max_workers=16,
        fetch_batch_size=500,
        min_fetch_interval=0.01,
        max_fetch_interval=0.1,
        terminal_flush_batch_size=100,
    )
    async def relay(body: dict[str, object]) -> dict[str, object]:
        return body

    await kafka.start()
    started = time.monotonic()
    await outbox_broker.start()
    await wait_empty(engine, "SELECT 1 FROM fso_outbox LIMIT 1", {})
    elapsed = time.monotonic() - started
    await outbox_broker.stop()
    await kafka.stop()
    return elapsed


PGQUEUER_SCHEMA = "bench_pgqueuer"  # its own schema: nothing of it in relaybus's tables


async def pgqueuer_drain(
    database_url: str, bootstrap: str, topic: str, events: int, keys: int
) -> float:
    """Seconds for pgqueuer (a QueueManager in drain mode, batches of 500 jobs) to claim
    ``events`` pre-enqueued jobs and publish each to Kafka with the relay's producer
    settings (acks=all, idempotent), keyed as the relay keys them."""
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries, QueueManager
    from pgqueuer.domain.settings import db_settings
    from pgqueuer.domain.types import QueueExecutionMode
    from pgqueuer.models import Job

    os.environ["PGQUEUER_SCHEMA"] = PGQUEUER_SCHEMA
    db_settings.cache_clear()  # pgqueuer reads its settings from the environment once
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    setup = await asyncpg.connect(dsn)
    worker = await asyncpg.connect(dsn)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5,
        max_batch_size=256 * 1024,
    )  # fmt: skip
    try:
        queries = Queries(AsyncpgDriver(setup))
        if not await queries.schema_is_installed():
            await queries.install()
        await queries.clear_queue()
        for start in range(0, events, 5000):
            batch = range(start, min(events, start + 5000))
            await queries.enqueue(
                ["bench.event"] * len(batch),
                [payload(n) for n in batch],
                [0] * len(batch),
                headers=[{"key": f"k{n % keys}"} for n in batch],
            )
        await producer.start()
        manager = QueueManager(Queries(AsyncpgDriver(worker)))

        @manager.entrypoint("bench.event")
        async def publish(job: Job) -> None:
            key = (job.headers or {}).get("key", "").encode()
            await producer.send_and_wait(topic, job.payload, key=key)

        started = time.monotonic()
        await manager.run(
            batch_size=500, mode=QueueExecutionMode.drain, dequeue_timeout=timedelta(seconds=1)
        )
        return time.monotonic() - started
    finally:
        await producer.stop()
        await worker.close()
        await setup.execute(f"DROP SCHEMA IF EXISTS {PGQUEUER_SCHEMA} CASCADE")
        await setup.close()


CPU_ROWS: list[dict[str, object]] = []  # per round: CPU seconds by process (cpu_used)


async def rounds(n: int, run: Callable[[int], Awaitable[float]], work: int, s: Series) -> None:
    """``n`` rounds of ``run`` (seconds for ``work`` units) into ``s``; each round's CPU
    use by this process and the stack's servers goes to ``CPU_ROWS``."""
    for r in range(n):
        used: dict[str, float] = {}
        with cpu_used(used):
            seconds = await run(r)
        s.values.append(work / seconds)
        CPU_ROWS.append({"variant": s.name, "per_second": work / seconds, "seconds": seconds,
                         "work": work, **used})  # fmt: skip
        print(f"  {s.name} round {r + 1}: {work / seconds:,.0f} {s.unit}", flush=True)


async def main(args: argparse.Namespace) -> None:
    settings = Settings()
    engine = create_engine(settings.database_url, pool_size=20)
    tag = uuid.uuid4().hex[:6]
    events, keys = args.events, args.keys
    comparisons: list[Comparison] = []
    try:
        # (a) Kafka: raw aiokafka vs the relay draining a pre-filled outbox.
        raw_k = Series("raw aiokafka", "msg/s")
        relay_k = Series("relay -> Kafka", "msg/s")
        kafka_pub = KafkaPublisher(settings.kafka_bootstrap)

        async def raw_kafka_round(r: int) -> float:
            topic = f"bench.raw.{tag}.{r}"
            await ensure_topic(settings.kafka_bootstrap, topic, partitions=PARTITIONS)
            return await raw_kafka(settings.kafka_bootstrap, topic, events, keys)

        async def relay_kafka_round(label: str, count: int) -> float:
            agg = f"bench{tag}{label}"
            await ensure_topic(
                settings.kafka_bootstrap, f"outbox.event.{agg}", partitions=PARTITIONS
            )
            await prefill_outbox(engine, agg, count, keys)
            return await relay_drain(engine, agg, {"kafka": kafka_pub}, "kafka", args.relay_batch)

        if "kafka" in args.only:
            print("(a) Kafka", flush=True)
            for r in range(args.rounds):  # interleave so drift hits both alike
                await rounds(1, lambda _r, r=r: raw_kafka_round(r), events, raw_k)
                await rounds(1, lambda _r, r=r: relay_kafka_round(f"k{r}", events), events, relay_k)
            comparisons.append(Comparison("relay/raw Kafka", relay_k, raw_k, 0.75))

        # (b) RabbitMQ: raw aio-pika with pipelined confirms vs the relay.
        if "rabbitmq" in args.only:
            print("(b) RabbitMQ", flush=True)
            raw_r = Series("raw aio-pika (pipelined confirms)", "msg/s")
            relay_r = Series("relay -> RabbitMQ", "msg/s")
            rabbit_pub = RabbitPublisher(settings.rabbitmq)
            await rabbit_sink(settings.rabbitmq, purge=True)
            for r in range(args.rounds):
                await rounds(
                    1, lambda _r: raw_rabbit(settings.rabbitmq, events, keys), events, raw_r
                )
                await rabbit_sink(settings.rabbitmq, purge=True)
                agg = f"bench{tag}r{r}"
                await prefill_outbox(engine, agg, events, keys)
                await rounds(
                    1,
                    lambda _r, agg=agg: relay_drain(
                        engine, agg, {"rabbitmq": rabbit_pub}, "rabbitmq", args.relay_batch
                    ),
                    events,
                    relay_r,
                )
                await rabbit_sink(settings.rabbitmq, purge=True)
            comparisons.append(Comparison("relay/raw RabbitMQ", relay_r, raw_r, 0.9))

        # (c) A business insert alone vs the same insert + its outbox row.
        if "inserts" in args.only:
            print("(c) inserts", flush=True)
            await create_insert_tables(engine)
            for label, (_, _, target) in INSERT_STYLES.items():
                row_style = "ORM model" if INSERT_STYLES[label][0] == "orm" else "Core INSERT"
                plain = Series(f"insert only ({row_style})", "tx/s")
                with_ob = Series(f"insert + event, {label}", "tx/s")
                for _ in range(args.insert_rounds):
                    for series, with_outbox in ((plain, False), (with_ob, True)):
                        await reset_insert_tables(engine)
                        await rounds(
                            1,
                            lambda _r, s=label, o=with_outbox: inserts(
                                engine, args.transactions, s, o, args.writers
                            ),
                            args.transactions,
                            series,
                        )
                comparisons.append(
                    Comparison(f"outbox insert/plain insert, {label}", with_ob, plain, target)
                )
            # The database's own share: Outbox.write's statements driven by a C client.
            plain_db = Series("insert only (pgbench)", "tx/s")
            with_db = Series("insert + event, one statement (pgbench)", "tx/s")
            constants = {
                "customer": "c1",
                "rb_aggregatetype": ORDER_AGGREGATE,
                "rb_type": ORDER_EVENT,
                "rb_payload": json.dumps(order_payload(2**62), separators=(",", ":")),
            }
            scripts = {
                False: pgbench_script(order_insert(), None, constants),
                True: pgbench_script(order_insert(), Outbox(), constants),
            }
            for _ in range(args.insert_rounds):
                for series, with_outbox in ((plain_db, False), (with_db, True)):
                    await reset_insert_tables(engine)
                    tps = await pgbench_tps(
                        settings.database_url, *scripts[with_outbox], args.pgbench_seconds
                    )
                    series.values.append(tps)
                    print(f"  {series.name}: {tps:,.0f} tx/s", flush=True)
            comparisons.append(
                Comparison(
                    "outbox insert/plain insert, database alone (pgbench, C client)",
                    with_db,
                    plain_db,
                    None,
                )
            )
            async with engine.begin() as conn:
                await conn.execute(text("DROP TABLE bench_orders"))
                await conn.execute(
                    text("DELETE FROM outbox WHERE aggregatetype = :a"), {"a": ORDER_AGGREGATE}
                )

        async def against_peer(
            peer_name: str, prefix: str, drain: Callable[[str], Awaitable[float]]
        ) -> tuple[Series, Series]:
            """Rounds of ``drain(topic)`` (the peer) interleaved with the relay's."""
            peer = Series(f"{peer_name} -> Kafka", "msg/s")
            ours = Series("relay -> Kafka", "msg/s")
            for r in range(args.rounds):
                topic = f"bench.{prefix}.{tag}.{r}"
                await ensure_topic(settings.kafka_bootstrap, topic, partitions=PARTITIONS)
                await rounds(1, lambda _r, t=topic: drain(t), args.peer_events, peer)
                await rounds(
                    1,
                    lambda _r, r=r: relay_kafka_round(f"{prefix}{r}", args.peer_events),
                    args.peer_events,
                    ours,
                )
            return ours, peer

        # (d) The same Kafka relay workload through faststream-outbox.
        if "peer" in args.only:
            print("(d) faststream-outbox", flush=True)
            ours, peer = await against_peer(
                "faststream-outbox",
                "fso",
                lambda topic: faststream_outbox_drain(
                    engine, settings.kafka_bootstrap, topic, args.peer_events
                ),
            )
            async with engine.begin() as conn:
                await conn.execute(text("DROP TABLE IF EXISTS fso_outbox"))
            comparisons.append(Comparison("relay/faststream-outbox", ours, peer, 3.0))

        # (e) The claim/drain path of a PostgreSQL job queue: pgqueuer -> Kafka.
        if "pgqueuer" in args.only:
            print("(e) pgqueuer", flush=True)
            ours, pgq = await against_peer(
                "pgqueuer",
                "pgq",
                lambda topic: pgqueuer_drain(
                    settings.database_url, settings.kafka_bootstrap, topic, args.peer_events, keys
                ),
            )
            comparisons.append(Comparison("relay/pgqueuer", ours, pgq, None))
    finally:
        async with engine.begin() as conn:  # leave no bench rows behind
            await conn.execute(text("DELETE FROM outbox WHERE aggregatetype LIKE 'bench%'"))
            await conn.execute(text("DELETE FROM outbox_archive WHERE aggregatetype LIKE 'bench%'"))
        await engine.dispose()
    params = {
        "events": events,
        "keys": keys,
        "rounds": args.rounds,
        "transactions": args.transactions,
        "insert_rounds": args.insert_rounds,
        "writers": args.writers,
        "pgbench_seconds": args.pgbench_seconds,
        "peer_events": args.peer_events,
    }
    md = write("relay", params, comparisons)
    md += (
        "\nCPU per 1 000 units of work (ms, from /proc: utime + stime) by process, per "
        "variant (median over its rounds); `cores busy` is all of them over the round's "
        "wall time (the machine has 2):\n\n"
        "| variant | this process | PostgreSQL | Kafka | RabbitMQ | cores busy |\n"
        "| --- | --- | --- | --- | --- | --- |\n"
    )
    processes = ("this process", *SERVERS)
    for variant in dict.fromkeys(str(row["variant"]) for row in CPU_ROWS):
        rows = [row for row in CPU_ROWS if row["variant"] == variant]
        per_k = {
            p: statistics.median(float(r[p]) * 1e6 / float(r["work"]) for r in rows)
            for p in processes
        }
        busy = statistics.median(
            sum(float(r[p]) for p in processes) / float(r["seconds"]) for r in rows
        )
        md += f"| {variant} | " + " | ".join(f"{per_k[p]:.0f}" for p in processes)
        md += f" | {busy:.2f} |\n"
    amend("relay", md, cpu=CPU_ROWS)
    print(md)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--transactions", type=int, default=10_000)
    parser.add_argument("--insert-rounds", type=int, default=7)
    parser.add_argument("--writers", type=int, default=8, help="concurrent insert sessions")
    parser.add_argument("--pgbench-seconds", type=int, default=8)
    parser.add_argument("--peer-events", type=int, default=50_000)
    parser.add_argument("--relay-batch", type=int, default=1000)
    parser.add_argument(
        "--only", nargs="+", default=["kafka", "rabbitmq", "inserts", "peer", "pgqueuer"]
    )
    asyncio.run(main(parser.parse_args()))
