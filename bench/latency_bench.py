"""End-to-end latency: an outbox commit until the consumer's handler applied it.

The pipeline is the real one, each part its own process as deployed: this process
writes events through ``Outbox.enqueue`` (one transaction each), ``relaybus relay``
publishes them, ``relaybus worker bench.latency_app:app`` applies them through its
inbox and records the time it did (same machine, same clock).

- **Open loop**: event i is due at t0 + i/rate whatever happened before it; a
  writer that falls behind sends late, and latency counts from the **scheduled**
  time, so a stall cannot hide the events queued behind it (coordinated omission).
  Percentiles are exact (every sample kept).
- **Loads**: 10 %, 50 % and 80 % of the pipeline's maximum rate, measured first in
  the same run (a pre-filled batch drained through relay and worker).
- **Baselines, same rates, same schedule**: a raw aiokafka producer (acks=all) and
  consumer, and raw aio-pika with publisher confirms and a consumer.
- **NOTIFY off**: the relay polling only (``RELAYBUS_RELAY_LISTEN=false``) at 50 %.

Run (stack up, database migrated):  python -m bench.latency_bench [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.latency_app import EVENT, HANDLER, TABLE_DDL
from bench.report import Comparison, Series, amend, results_dir, write
from relaybus.brokers.kafka_admin import ensure_topic
from relaybus.brokers.rabbit_management import queue_depths
from relaybus.db import create_engine, session_factory
from relaybus.outbox.writer import Outbox
from relaybus.settings import Settings

REPO = Path(__file__).resolve().parents[1]
PARTITIONS = 16
KEYS = 1000
PAD = "x" * 150


def percentile(sorted_values: list[float], q: float) -> float:
    """The exact q-quantile (nearest rank) of an ascending list."""
    return sorted_values[max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))]


def summary(latencies_ms: list[float]) -> dict[str, float]:
    values = sorted(latencies_ms)
    return {
        "n": len(values),
        "p50": percentile(values, 0.50),
        "p99": percentile(values, 0.99),
        "p99.9": percentile(values, 0.999),
        "max": values[-1],
    }


class Pipeline:
    """A ``relaybus relay`` and a ``relaybus worker`` for one broker, as subprocesses."""

    def __init__(self, broker: str, tag: str, logs: Path, bootstrap: str) -> None:
        self.broker = broker
        self.bootstrap = bootstrap
        self.aggregate = f"benchlat{tag}"
        self.topic = f"outbox.event.{self.aggregate}"
        self.queue = f"bench.latency.{tag}"
        self.logs = logs
        self.procs: dict[str, asyncio.subprocess.Process] = {}

    def _env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            # The bench's events to the broker under test; anything else in a shared
            # outbox goes where the default route sends it (an unrouted row would be
            # marked failed).
            "RELAYBUS_ROUTES": json.dumps(
                [
                    {"pattern": EVENT, "brokers": [self.broker]},
                    {"pattern": "*", "brokers": ["kafka"]},
                ]
            ),
            "RELAYBUS_BENCH_BROKER": self.broker,
            "RELAYBUS_BENCH_SOURCE": self.topic if self.broker == "kafka" else self.queue,
            **extra,
        }

    async def _spawn(self, name: str, *argv: str, **env: str) -> None:
        log = (self.logs / f"{name}.log").open("ab")
        self.procs[name] = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "relaybus"), *argv,
            cwd=REPO, env=self._env(**env), stdout=log, stderr=log,
        )  # fmt: skip

    async def start_worker(self, management_url: str) -> None:
        """Start the worker; on RabbitMQ, wait until its queue has a consumer (the
        relay publishes with ``mandatory``: an unbound event would be refused)."""
        await self._spawn("worker", "worker", "bench.latency_app:app")
        if self.broker != "rabbitmq":
            return
        deadline = time.monotonic() + 60
        while True:
            depths = await queue_depths(management_url)
            if any(d.queue == self.queue and d.consumers > 0 for d in depths):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"queue {self.queue} has no consumer after 60 s")
            await asyncio.sleep(0.1)

    async def start_relay(self, listen: bool) -> None:
        await self._spawn(
            "relay", "relay", RELAYBUS_RELAY_LISTEN="true" if listen else "false",
            RELAYBUS_RELAY_INSTANCE=f"bench-latency-{os.getpid()}",
        )  # fmt: skip

    async def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 60)

    async def stop_all(self) -> None:
        for name in list(self.procs):
            await self.stop(name)


async def applied(engine: AsyncEngine, run: str) -> int:
    async with engine.connect() as conn:
        found = await conn.execute(
            text("SELECT count(*) FROM bench_latency WHERE run = :run"), {"run": run}
        )
        return int(found.scalar_one())


async def wait_applied(engine: AsyncEngine, run: str, n: int, within: float) -> None:
    deadline = time.monotonic() + within
    while await applied(engine, run) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{run}: fewer than {n} applied within {within:.0f}s")
        await asyncio.sleep(0.05)


async def latencies_of(engine: AsyncEngine, run: str) -> list[float]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT (applied - intended) * 1000 FROM bench_latency WHERE run = :run"),
            {"run": run},
        )
        return [float(r[0]) for r in rows]


def body(run: str, i: int, t: float) -> dict[str, Any]:
    return {"run": run, "i": i, "t": t, "pad": PAD}


async def schedule(
    rate: float, seconds: float, send: Callable[[int, float], Awaitable[None]], senders: int
) -> int:
    """Call ``send(i, due)`` for i = 0 ... rate * seconds at ``due = t0 + i/rate``
    (open loop: ``senders`` tasks take slots in order; a late one sends at once)."""
    n = max(1, int(rate * seconds))
    t0 = time.time() + 0.1
    slots = iter(range(n))

    async def sender() -> None:
        for i in slots:
            due = t0 + i / rate
            ahead = due - time.time()
            if ahead > 0:
                await asyncio.sleep(ahead)
            await send(i, due)

    await asyncio.gather(*(sender() for _ in range(senders)))
    return n


@dataclass
class Round:
    """One open-loop run: per event, scheduled → applied (the headline, corrected for
    coordinated omission), commit → applied, and how late the writers committed
    (scheduled → commit: if that grows, the load generator, not relaybus, fell behind)."""

    scheduled: list[float]
    from_commit: list[float]
    writer_late: list[float]
    on_topic: list[float]  # commit -> the record seen on the topic (Kafka): the relay's part


async def relaybus_round(
    engine: AsyncEngine, pipeline: Pipeline, rate: float, seconds: float, writers: int
) -> Round:
    run = f"rb-{uuid.uuid4().hex[:8]}"
    outbox = Outbox()
    sessions = session_factory(engine)
    committed: dict[int, tuple[float, float]] = {}

    async def send(i: int, due: float) -> None:
        async with sessions() as session, session.begin():
            await outbox.enqueue(
                session, aggregate_type=pipeline.aggregate, aggregate_id=f"k{i % KEYS}",
                type=EVENT, payload=body(run, i, due),
            )  # fmt: skip
        committed[i] = (due, time.time())

    seen: dict[int, float] = {}
    observer = (
        await _observe(pipeline.bootstrap, pipeline.topic, run, seen)
        if pipeline.broker == "kafka"
        else None
    )
    try:
        n = await schedule(rate, seconds, send, writers)
        await wait_applied(engine, run, n, within=seconds * 4 + 60)
    finally:
        if observer is not None:
            observer.cancel()
            await asyncio.gather(observer, return_exceptions=True)
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text("SELECT i, applied FROM bench_latency WHERE run = :run"), {"run": run}
            )
        ).all()
    done = {int(i): float(t) for i, t in rows}
    return Round(
        [(done[i] - due) * 1000 for i, (due, _) in committed.items()],
        [(done[i] - at) * 1000 for i, (_, at) in committed.items()],
        [(at - due) * 1000 for due, at in committed.values()],
        [(seen[i] - at) * 1000 for i, (_, at) in committed.items() if i in seen],
    )


async def _observe(
    bootstrap: str, topic: str, run: str, seen: dict[int, float]
) -> asyncio.Task[None]:
    """A plain consumer on the relay's topic noting when each event of ``run`` arrived
    (splits the latency into the relay's part and the consumer's)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(parts)
    await consumer.seek_to_end(*parts)  # only this run's events matter

    async def watch() -> None:
        try:
            while True:
                for records in (await consumer.getmany(timeout_ms=100)).values():
                    now = time.time()
                    for r in records:
                        data = json.loads(r.value)
                        if data.get("run") == run:
                            seen[int(data["i"])] = now
        finally:
            await consumer.stop()

    return asyncio.create_task(watch())


async def max_rate(engine: AsyncEngine, pipeline: Pipeline, events: int, writers: int) -> float:
    """Events/s the whole pipeline sustains on this machine, writers included:
    ``writers`` sessions commit ``events`` back to back (closed loop) while relay and
    worker drain; from the first commit until the last event is applied."""
    run = f"max-{uuid.uuid4().hex[:8]}"
    outbox = Outbox()
    sessions = session_factory(engine)
    slots = iter(range(events))

    async def writer() -> None:
        for i in slots:
            async with sessions() as session, session.begin():
                await outbox.enqueue(
                    session, aggregate_type=pipeline.aggregate, aggregate_id=f"k{i % KEYS}",
                    type=EVENT, payload=body(run, i, 0.0),
                )  # fmt: skip

    began = time.monotonic()
    await asyncio.gather(*(writer() for _ in range(writers)))
    await wait_applied(engine, run, events, within=events / 20 + 120)
    return events / (time.monotonic() - began)


async def raw_kafka_round(bootstrap: str, rate: float, seconds: float) -> list[float]:
    """A raw aiokafka producer (acks=all, idempotent) and consumer, same schedule."""
    topic = f"bench.rawlat.{uuid.uuid4().hex[:8]}"
    await ensure_topic(bootstrap, topic, partitions=PARTITIONS)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await producer.start()
    await consumer.start()
    latencies: list[float] = []
    n_expected = max(1, int(rate * seconds))
    try:
        # Every partition has a leader and the consumer its assignment before the
        # clock starts: one warm-up record per partition, produced and read back.
        for p in range(PARTITIONS):
            await producer.send_and_wait(topic, b'{"warm":true}', partition=p)
        warm = 0
        while warm < PARTITIONS:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                warm += len(records)

        async def consume() -> None:
            while len(latencies) < n_expected:
                for records in (await consumer.getmany(timeout_ms=100)).values():
                    now = time.time()
                    latencies.extend((now - json.loads(r.value)["t"]) * 1000 for r in records)

        reader = asyncio.create_task(consume())

        async def send(i: int, due: float) -> None:
            value = json.dumps(body("raw", i, due)).encode()
            await producer.send(topic, value, key=f"k{i % KEYS}".encode())

        await schedule(rate, seconds, send, 1)
        await asyncio.wait_for(reader, seconds * 4 + 60)
    finally:
        await consumer.stop()
        await producer.stop()
    return latencies


async def raw_rabbit_round(url: str, rate: float, seconds: float) -> list[float]:
    """Raw aio-pika: persistent publishes with confirms (not awaited one by one) to a
    durable queue, and a consumer acking each message, same schedule."""
    connection = await aio_pika.connect(url)
    latencies: list[float] = []
    n_expected = max(1, int(rate * seconds))
    done = asyncio.Event()
    try:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(
            f"bench.rawlat.{uuid.uuid4().hex[:8]}", auto_delete=True
        )
        consume_channel = await connection.channel()
        await consume_channel.set_qos(prefetch_count=256)
        consumed = await consume_channel.get_queue(queue.name)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            latencies.append((time.time() - json.loads(message.body)["t"]) * 1000)
            await message.ack()
            if len(latencies) >= n_expected:
                done.set()

        await consumed.consume(on_message)
        confirms: list[asyncio.Task[Any]] = []

        async def send(i: int, due: float) -> None:
            message = aio_pika.Message(
                json.dumps(body("raw", i, due)).encode(),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            confirms.append(
                asyncio.create_task(channel.default_exchange.publish(message, queue.name))
            )

        await schedule(rate, seconds, send, 1)
        await asyncio.gather(*confirms)
        await asyncio.wait_for(done.wait(), seconds * 4 + 60)
    finally:
        await connection.close()
    return latencies


async def main(args: argparse.Namespace) -> None:
    settings = Settings()
    engine = create_engine(settings.database_url, pool_size=args.writers + 4)
    logs = results_dir() / "latency-logs"
    logs.mkdir(parents=True, exist_ok=True)
    async with engine.begin() as conn:
        await conn.execute(text(TABLE_DDL))
    comparisons: list[Comparison] = []
    table: list[dict[str, Any]] = []
    maxima: dict[str, float] = {}
    try:
        for broker in args.brokers:
            tag = uuid.uuid4().hex[:6]
            pipeline = Pipeline(broker, tag, logs, settings.kafka_bootstrap)
            if broker == "kafka":
                await ensure_topic(settings.kafka_bootstrap, pipeline.topic, PARTITIONS)
            try:
                await pipeline.start_worker(settings.rabbitmq_management)
                await pipeline.start_relay(listen=True)
                warm = await relaybus_round(engine, pipeline, 50, 1, 1)  # pipeline ready
                print(f"{broker}: warm-up max {max(warm.scheduled):.0f} ms", flush=True)
                maxima[broker] = await max_rate(engine, pipeline, args.max_events, args.writers)
                print(f"{broker}: maximum {maxima[broker]:,.0f} events/s", flush=True)
                for load in args.loads:
                    rate = load * maxima[broker]
                    ours = Series(f"relaybus, {rate:,.0f}/s", "ms p99")
                    raw = Series(f"raw {broker} pair, {rate:,.0f}/s", "ms p99")
                    ours_all: list[dict[str, float]] = []
                    raw_all: list[dict[str, float]] = []
                    for _ in range(args.rounds):  # interleaved
                        measured = await relaybus_round(engine, pipeline, rate, args.seconds,
                                                        args.writers)  # fmt: skip
                        got = summary(measured.scheduled)
                        print(f"    commit -> applied {summary(measured.from_commit)}; writers "
                              f"late {summary(measured.writer_late)}", flush=True)  # fmt: skip
                        if measured.on_topic:
                            print(f"    commit -> on topic {summary(measured.on_topic)}")
                        base = summary(
                            await raw_kafka_round(settings.kafka_bootstrap, rate, args.seconds)
                            if broker == "kafka"
                            else await raw_rabbit_round(settings.rabbitmq, rate, args.seconds)
                        )
                        ours.values.append(got["p99"])
                        raw.values.append(base["p99"])
                        ours_all.append(got)
                        raw_all.append(base)
                        print(f"  {broker} {load:.0%}: relaybus {got} | raw {base}", flush=True)
                    table += [_row(broker, load, rate, "relaybus", ours_all),
                              _row(broker, load, rate, "raw pair", raw_all)]  # fmt: skip
                    comparisons.append(Comparison(
                        f"{broker}: e2e p99 at {load:.0%} of max / raw pair p99",
                        ours, raw, 3.0 if math.isclose(load, 0.5) else None,
                        higher_is_better=False,
                    ))  # fmt: skip
                    if math.isclose(load, 0.5):
                        comparisons.append(Comparison(
                            f"{broker}: e2e p99 at 50 % of max (ms, absolute)", ours, raw, 25.0,
                            higher_is_better=False, target_on="value",
                        ))  # fmt: skip
                        p999 = Series("relaybus p99.9", "ms", [r["p99.9"] for r in ours_all])
                        raw999 = Series("raw pair p99.9", "ms", [r["p99.9"] for r in raw_all])
                        comparisons.append(Comparison(
                            f"{broker}: e2e p99.9 at 50 % of max (ms, absolute)", p999, raw999,
                            50.0, higher_is_better=False, target_on="value",
                        ))  # fmt: skip
                if args.polling:
                    # Polling only: what the LISTEN/NOTIFY wake-up buys, at 50 %.
                    await pipeline.stop("relay")
                    await pipeline.start_relay(listen=False)
                    rate = 0.5 * maxima[broker]
                    polled = Series(f"relay polling only, {rate:,.0f}/s", "ms p50")
                    woken = Series(f"relay woken by NOTIFY, {rate:,.0f}/s", "ms p50")
                    for row in table:
                        if (
                            row["broker"] == broker
                            and row["variant"] == "relaybus"
                            and (math.isclose(row["load"], 0.5))
                        ):
                            woken.values = list(row["p50s"])
                    polled_all = []
                    for _ in range(args.rounds):
                        polled_round = await relaybus_round(
                            engine, pipeline, rate, args.seconds, args.writers
                        )
                        got = summary(polled_round.scheduled)
                        polled.values.append(got["p50"])
                        polled_all.append(got)
                        print(f"  {broker} 50% polling: {got}", flush=True)
                    table.append(_row(broker, 0.5, rate, "relaybus, polling only", polled_all))
                    if woken.values:
                        comparisons.append(Comparison(
                            f"{broker}: p50 polling only / with NOTIFY at 50 %", polled, woken,
                            None, higher_is_better=False,
                        ))  # fmt: skip
            finally:
                await pipeline.stop_all()
    finally:
        async with engine.begin() as conn:
            await conn.execute(text("DROP TABLE IF EXISTS bench_latency"))
            await conn.execute(text("DELETE FROM outbox WHERE aggregatetype LIKE 'benchlat%'"))
            await conn.execute(
                text("DELETE FROM outbox_archive WHERE aggregatetype LIKE 'benchlat%'")
            )
            await conn.execute(text("DELETE FROM inbox WHERE consumer = :c"), {"c": HANDLER})
        await engine.dispose()
    params = {"seconds": args.seconds, "loads": args.loads, "rounds": args.rounds,
              "writers": args.writers, "max_events": args.max_events}  # fmt: skip
    md = write("latency", params, comparisons)
    md += (
        "\nMaximum sustainable rate (pre-filled batch through relay and worker): "
        + ", ".join(f"{b} {r:,.0f} events/s" for b, r in maxima.items())
        + "\n\n"
    )
    md += "| broker | load | rate/s | pipeline | p50 ms | p99 ms | p99.9 ms | max ms | samples |\n"
    md += "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    for row in table:
        md += (
            f"| {row['broker']} | {row['load']:.0%} | {row['rate']:,.0f} | {row['variant']} | "
            f"{row['p50']:.1f} | {row['p99']:.1f} | {row['p99.9']:.1f} | {row['max']:.1f} | "
            f"{row['n']} |\n"
        )
    amend("latency", md, max_rate=maxima, percentiles=table)
    print(md)


def _row(
    broker: str, load: float, rate: float, variant: str, rounds: list[dict[str, float]]
) -> dict[str, Any]:
    """Medians over rounds of each percentile (and every round's p50, for reuse)."""

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    return {"broker": broker, "load": load, "rate": rate, "variant": variant,
            "p50": med("p50"), "p99": med("p99"), "p99.9": med("p99.9"), "max": med("max"),
            "n": int(sum(r["n"] for r in rounds)), "p50s": [r["p50"] for r in rounds]}  # fmt: skip


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20.0, help="open-loop run per round")
    p.add_argument("--loads", type=float, nargs="+", default=[0.1, 0.5, 0.8])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--writers", type=int, default=16, help="concurrent writer sessions")
    p.add_argument("--max-events", type=int, default=20_000, help="batch for the maximum rate")
    p.add_argument("--brokers", nargs="+", default=["kafka", "rabbitmq"])
    p.add_argument("--polling", action=argparse.BooleanOptionalAction, default=True)
    return p


if __name__ == "__main__":
    asyncio.run(main(parser().parse_args()))
