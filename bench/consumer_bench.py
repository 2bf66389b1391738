"""Consumer benchmark: relaybus's Kafka consumer with and without its inbox, against a
raw aiokafka loop and a FastStream subscriber doing the same work.

The work per message is one SQL effect row. relaybus runs SQL handlers in shared
transactions (up to 20 records of a key bucket; the inbox variant adds one inbox
statement per transaction); the raw loop and FastStream commit one transaction per
message, and so does the "1 message per transaction" relaybus variant, for a
like-for-like comparison. Every variant reads the same pre-filled topic
from the beginning with a fresh consumer group; the time runs from start until every
effect row is committed. Rounds are interleaved so machine drift hits all alike.

Scaling: 1, 2 and 4 worker processes (the inbox consumer, as shipped) in one group
on a 12-partition topic; the rate is taken between 10 % and 90 % of the effects,
so start-up and the rebalances as members join are outside it.

    .venv/bin/python -m bench.consumer_bench [--messages 50000] [--rounds 3] [--workers 1 2 4]

Writes ``bench/results/consumer.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from bench.cpu import SERVERS, cpu_seconds, pids_named
from bench.report import Comparison, Series, amend, write
from relaybus.brokers.kafka_admin import ensure_topic
from relaybus.consumers.app import ConsumerApp
from relaybus.consumers.incoming import Incoming
from relaybus.consumers.worker import Worker
from relaybus.db import create_engine, session_factory
from relaybus.events import event
from relaybus.message import Message
from relaybus.settings import Settings

PAD = "x" * 180
PARTITIONS = 6
SCALING_PARTITIONS = 12  # divisible by 1, 2 and 4 workers
CONCURRENCY = 16
EFFECT = text("INSERT INTO bench_effects (run, message_id, n) VALUES (:run, :id, :n)")


async def prefill(
    bootstrap: str,
    topic: str,
    messages: int,
    keys: int,
    traceparent: Callable[[int], str] | None = None,
) -> None:
    """Produce ``messages`` relaybus messages (~200-byte payloads) over ``keys`` keys;
    message ``n`` carries ``traceparent(n)`` when given (the tracing benchmark)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, acks="all")
    await producer.start()
    try:
        pending = []
        for n in range(messages):
            body = json.dumps({"n": n, "pad": PAD}, separators=(",", ":")).encode()
            m = Message(
                type="bench.event",
                aggregatetype="bench",
                aggregateid=f"k{n % keys}",
                payload=body,
                traceparent=traceparent(n) if traceparent else None,
            )
            pending.append(
                await producer.send(
                    topic, value=body, key=m.aggregateid.encode(), headers=m.kafka_headers()
                )
            )
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def effects_done(engine: AsyncEngine, run: str) -> int:
    async with engine.connect() as conn:
        return int(
            (
                await conn.execute(
                    text("SELECT count(*) FROM bench_effects WHERE run = :r"), {"r": run}
                )
            ).scalar_one()
        )


async def wait_for_effects(engine: AsyncEngine, run: str, messages: int) -> None:
    """Poll the effect count every 0.2 s until all ``messages`` are applied."""
    while True:
        if await effects_done(engine, run) >= messages:
            return
        await asyncio.sleep(0.2)


@event("bench.event")
class BenchEvent(BaseModel):
    """The prefilled payload as an event class (the typed handler's parameter)."""

    n: int
    pad: str


def bench_app(
    run: str, topic: str, inbox: bool, batch_size: int, typed: bool = False
) -> ConsumerApp:
    """The benchmark's consumer: one effect row per message, group and name ``run``;
    ``typed``: the same handler taking ``BenchEvent`` (validated) instead of the dict."""
    app = ConsumerApp(run)

    async def handle(message: Incoming, session: AsyncSession | None) -> None:
        assert session is not None  # a SQL handler: the runtime's transaction
        await session.execute(EFFECT, {"run": run, "id": message.id, "n": message.payload["n"]})

    async def handle_typed(
        payload: BenchEvent, session: AsyncSession | None, message: Incoming
    ) -> None:
        assert session is not None
        await session.execute(EFFECT, {"run": run, "id": message.id, "n": payload.n})

    # Identical but for the inbox: both get the runtime's (batched) transactions.
    dedupe = "inbox" if inbox else "none"
    app.kafka(
        topic,
        group=run,
        name=run,
        dedupe=dedupe,
        sql=True,
        concurrency=CONCURRENCY,
        batch_size=batch_size,
    )(handle_typed if typed else handle)
    return app


async def relaybus_round(
    settings: Settings,
    engine: AsyncEngine,
    topic: str,
    messages: int,
    inbox: bool,
    batch_size: int = 20,
    typed: bool = False,
) -> float:
    run = f"rb-{'inbox' if inbox else 'plain'}-{uuid.uuid4().hex[:8]}"
    worker = Worker(bench_app(run, topic, inbox, batch_size, typed), settings)
    stop = asyncio.Event()
    started = time.monotonic()
    task = asyncio.create_task(worker.run(stop))
    await wait_for_effects(engine, run, messages)
    elapsed = time.monotonic() - started
    stop.set()
    await task
    return elapsed


async def raw_round(settings: Settings, engine: AsyncEngine, topic: str, messages: int) -> float:
    """A hand-written aiokafka loop: batch, effects concurrently (bounded), commit."""
    run = f"raw-{uuid.uuid4().hex[:8]}"
    sessions = session_factory(engine)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=run,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    slots = asyncio.Semaphore(CONCURRENCY)

    async def one(value: bytes, headers: list[tuple[str, bytes]]) -> None:
        async with slots, sessions() as session, session.begin():
            message_id = next(v.decode() for k, v in headers if k == "id")
            await session.execute(
                EFFECT, {"run": run, "id": message_id, "n": json.loads(value)["n"]}
            )

    started = time.monotonic()
    await consumer.start()
    done = 0
    try:
        while done < messages:
            batches = await consumer.getmany(timeout_ms=500)
            records = [r for rs in batches.values() for r in rs]
            await asyncio.gather(*(one(r.value, list(r.headers)) for r in records))
            await consumer.commit()
            done += len(records)
    finally:
        await consumer.stop()
    return time.monotonic() - started


async def faststream_round(
    settings: Settings, engine: AsyncEngine, topic: str, messages: int
) -> float:
    """A FastStream subscriber (manual ack after the effect) doing the same work."""
    from faststream import AckPolicy
    from faststream.kafka import KafkaBroker, KafkaMessage

    run = f"fs-{uuid.uuid4().hex[:8]}"
    sessions = session_factory(engine)
    broker = KafkaBroker(settings.kafka_bootstrap, logger=None)

    @broker.subscriber(
        topic,
        group_id=run,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.ACK,
        max_workers=CONCURRENCY,
    )
    async def handle(body: dict[str, object], msg: KafkaMessage) -> None:
        message_id = msg.headers["id"]
        async with sessions() as session, session.begin():
            await session.execute(EFFECT, {"run": run, "id": message_id, "n": body["n"]})

    started = time.monotonic()
    async with broker:
        await broker.start()
        await wait_for_effects(engine, run, messages)
    return time.monotonic() - started


async def serve_worker(run: str, topic: str) -> None:
    """One worker process of the scaling rounds (inbox on, as shipped), until SIGTERM."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await Worker(bench_app(run, topic, True, 20), Settings()).run(stop)


async def scaling_round(
    engine: AsyncEngine, topic: str, messages: int, workers: int
) -> dict[str, float]:
    """``workers`` processes in one group: msg/s and the CPU seconds of the workers,
    PostgreSQL and Kafka, all taken between 10 % and 90 % of the effects, so start-up
    and the group's rebalance as members join are not in them."""
    run = f"rb-inbox-scale-{uuid.uuid4().hex[:8]}"
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.consumer_bench", "worker", run, topic
        )
        for _ in range(workers)
    ]
    groups: dict[str, list[int]] = {}
    try:
        marks: dict[float, tuple[float, dict[str, float]]] = {}
        deadline = time.monotonic() + messages / 50 + 120
        while len(marks) < 2:
            done = await effects_done(engine, run)
            for share in (0.1, 0.9):
                if share not in marks and done >= share * messages:
                    if not groups:  # now: the workers' database sessions exist by then
                        groups = {
                            "worker_cpu_s": [p.pid for p in procs],
                            "postgres_cpu_s": pids_named(SERVERS["PostgreSQL"]),
                            "kafka_cpu_s": pids_named(SERVERS["Kafka"]),
                        }
                    cpu = {k: cpu_seconds(pids) for k, pids in groups.items()}
                    marks[share] = (time.monotonic(), cpu)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{done} of {messages} effects within the deadline")
            await asyncio.sleep(0.1)
        (began, cpu_began), (ended, cpu_ended) = marks[0.1], marks[0.9]
        return {
            "workers": workers,
            "rate": 0.8 * messages / (ended - began),
            "seconds": ended - began,
            **{k: cpu_ended[k] - cpu_began[k] for k in groups},
        }
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            await asyncio.wait_for(proc.wait(), 60)
        async with engine.begin() as conn:  # polled with count(*): keep the table small
            await conn.execute(text("DELETE FROM bench_effects WHERE run = :r"), {"r": run})


async def rounds(n: int, run: Callable[[], Awaitable[float]], work: int, s: Series) -> None:
    for _ in range(n):
        seconds = await run()
        s.values.append(work / seconds)
        print(f"  {s.name}: {work / seconds:,.0f} {s.unit}", flush=True)


async def main(args: argparse.Namespace) -> None:
    settings = Settings()
    engine = create_engine(settings.database_url, pool_size=CONCURRENCY + 4)
    topic = f"bench.consume.{uuid.uuid4().hex[:6]}"
    async with engine.begin() as conn:
        await conn.execute(
            text("CREATE TABLE IF NOT EXISTS bench_effects (run text, message_id uuid, n integer)")
        )
    await ensure_topic(settings.kafka_bootstrap, topic, partitions=PARTITIONS)
    print(f"prefilling {args.messages:,} messages", flush=True)
    await prefill(settings.kafka_bootstrap, topic, args.messages, args.keys)
    inbox = Series("relaybus consumer + inbox", "msg/s")
    plain = Series("relaybus consumer, no inbox", "msg/s")
    typed = Series("relaybus consumer, no inbox, typed handler (event class)", "msg/s")
    single = Series("relaybus consumer, no inbox, 1 message per transaction", "msg/s")
    raw = Series("raw aiokafka loop", "msg/s")
    fs = Series("FastStream subscriber", "msg/s")
    m = args.messages
    scale_topic = f"bench.consume.scale.{uuid.uuid4().hex[:6]}"
    await ensure_topic(settings.kafka_bootstrap, scale_topic, partitions=SCALING_PARTITIONS)
    await prefill(settings.kafka_bootstrap, scale_topic, args.messages, args.keys)
    scaling = {n: Series(f"{n} worker process(es), one group", "msg/s") for n in args.workers}
    cells: list[dict[str, float]] = []
    try:
        for round_no in range(args.rounds):
            for n in args.workers:
                cell = await scaling_round(engine, scale_topic, m, n)
                scaling[n].values.append(cell["rate"])
                cells.append(cell)
                busy = sum(v for k, v in cell.items() if k.endswith("_cpu_s")) / cell["seconds"]
                own = cell["worker_cpu_s"] / cell["seconds"]
                print(f"  {n} worker(s): {cell['rate']:,.0f} msg/s, cores busy {busy:.2f} "
                      f"(workers {own:.2f})", flush=True)  # fmt: skip
            await rounds(1, lambda: relaybus_round(settings, engine, topic, m, True), m, inbox)
            # The dict and the typed handler back to back, their order swapped each
            # round: what runs second meets a bigger effects table and checkpoint.
            pair = [
                (lambda: relaybus_round(settings, engine, topic, m, False), plain),
                (lambda: relaybus_round(settings, engine, topic, m, False, typed=True), typed),
            ]
            for run, series in pair if round_no % 2 == 0 else reversed(pair):
                await rounds(1, run, m, series)
            await rounds(
                1,
                lambda: relaybus_round(settings, engine, topic, m, False, batch_size=1),
                m,
                single,
            )
            await rounds(1, lambda: raw_round(settings, engine, topic, m), m, raw)
            await rounds(1, lambda: faststream_round(settings, engine, topic, m), m, fs)
    finally:
        async with engine.begin() as conn:
            await conn.execute(text("DROP TABLE bench_effects"))
            await conn.execute(text("DELETE FROM inbox WHERE consumer LIKE 'rb-inbox-%'"))
        await engine.dispose()
    comparisons = [
        Comparison("inbox consumer/same consumer without inbox", inbox, plain, 0.8),
        Comparison("typed handler (event class)/same handler with the dict", typed, plain, 0.9),
        Comparison("relaybus consumer (no inbox)/raw aiokafka loop", plain, raw, None),
        Comparison("relaybus, 1 message per transaction/raw aiokafka loop", single, raw, None),
        Comparison("relaybus consumer (no inbox)/FastStream", plain, fs, None),
        Comparison("relaybus consumer + inbox/FastStream (no dedupe)", inbox, fs, None),
        *(
            Comparison(f"{n} workers / 1 worker, one group", scaling[n],
                       scaling[args.workers[0]], None)
            for n in args.workers[1:]
        ),
    ]  # fmt: skip
    params = {"messages": m, "keys": args.keys, "rounds": args.rounds,
              "concurrency": CONCURRENCY, "workers": args.workers}  # fmt: skip
    md = write("consumer", params, comparisons)
    md += (
        "\nScaling rounds: cores kept busy between 10 % and 90 % of the effects (CPU "
        "seconds from /proc over that window's wall time; the machine has "
        f"{os.cpu_count()}):\n\n| workers | msg/s | workers | PostgreSQL | Kafka | all |\n"
        "| --- | --- | --- | --- | --- | --- |\n"
    )
    for cell in cells:
        cores = [cell[k] / cell["seconds"] for k in ("worker_cpu_s", "postgres_cpu_s",
                                                     "kafka_cpu_s")]  # fmt: skip
        md += f"| {cell['workers']:.0f} | {cell['rate']:,.0f} | "
        md += " | ".join(f"{c:.2f}" for c in cores) + f" | {sum(cores):.2f} |\n"
    amend("consumer", md, cells=cells)
    print(md)


def cli() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "worker":
        asyncio.run(serve_worker(sys.argv[2], sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
