"""Tracing cost: the relay and a consumer with tracing off, at a 10 % sample ratio and
at 100 %, in one run (rounds interleaved, their order rotated each round).

- **Relay**: an in-process relay drains a pre-filled outbox to Kafka. Every row
  carries a ``traceparent`` as a traced writer stores it, its sampled flag set on 10 %
  of the rows (the sampling decision made where the trace began). Off: no tracer;
  10 %: the standard ``parentbased_traceidratio`` sampler at 0.1 (a publish span is
  recorded for the sampled rows, a non-recording one for the rest); 100 %:
  ``always_on`` (every publish span recorded and exported).
- **Consumer**: an in-process worker (no inbox, SQL handler in the runtime's shared
  transactions, as shipped) reads a pre-filled topic whose records carry the same
  kind of ``traceparent``; the same three modes. Its rate is counted from the first
  applied effect to the last (joining the group is no part of tracing's cost).

Spans leave through the SDK's batch processor and OTLP/HTTP exporter to
``bench.otlp_sink``, a process that accepts and discards them: the backend's own work
is not the traced process's cost (Jaeger on these two cores would be measured too).

    .venv/bin/python -m bench.tracing_bench [--events 20000] [--messages 20000] [--rounds 3]

Writes ``bench/results/tracing.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable

from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.consumer_bench import PAD, bench_app, effects_done, prefill
from bench.relay_bench import PARTITIONS, relay_drain
from bench.report import Comparison, Series, write
from relaybus import tracing
from relaybus.brokers.kafka import KafkaPublisher
from relaybus.brokers.kafka_admin import ensure_topic
from relaybus.consumers.worker import Worker
from relaybus.db import create_engine
from relaybus.settings import Settings
from relaybus.tracing import otel

SAMPLED_SHARE = 0.1  # the share of traces sampled where they began
MODES: dict[str, dict[str, str] | None] = {
    "off": None,
    "10 %": {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
    "100 %": {"OTEL_TRACES_SAMPLER": "always_on"},
}


def traceparent(n: int) -> str:
    """A writer's stored context: sampled for ``SAMPLED_SHARE`` of the messages."""
    flags = "01" if n % round(1 / SAMPLED_SHARE) == 0 else "00"
    return f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-{flags}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def use_mode(mode: str, endpoint: str) -> otel.OtelTracer | None:
    """Install the tracer of ``mode`` (None: tracing off)."""
    environ = MODES[mode]
    if environ is None:
        tracing.install(None)
        return None
    chosen = otel.build("bench", {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, **environ})
    tracing.install(chosen)
    return chosen


async def prefill_outbox(engine: AsyncEngine, agg: str, events: int, keys: int) -> None:
    """``events`` pending rows as traced writers store them: a ``traceparent`` each,
    sampled on every ``1 / SAMPLED_SHARE``-th (bulk-loaded: the load is not measured)."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                """
                INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload, timestamp,
                                    headers, partition)
                SELECT gen_random_uuid(), :agg, 'k' || (g % :keys), 'bench.event',
                       jsonb_build_object('n', g, 'pad', CAST(:pad AS text)),
                       now() AT TIME ZONE 'utc',
                       jsonb_build_object('traceparent', '00-' || md5(g || :salt) || '-'
                           || substr(md5('s' || g || :salt), 1, 16) || '-'
                           || CASE WHEN g % :every = 0 THEN '01' ELSE '00' END),
                       abs(hashtext('k' || (g % :keys))) % :parts
                  FROM generate_series(1, :n) AS g
                """
            ),
            {"agg": agg, "keys": keys, "pad": PAD, "parts": PARTITIONS, "n": events,
             "salt": uuid.uuid4().hex, "every": round(1 / SAMPLED_SHARE)},
        )  # fmt: skip


async def drop_topics(bootstrap: str, prefixes: tuple[str, ...]) -> None:
    """Delete the run's topics (and the worker's retry tiers and DLQ of its topic)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        ours = [t for t in await admin.list_topics() if t.startswith(prefixes)]
        if ours:
            await admin.delete_topics(ours)
    finally:
        await admin.close()


async def steady_rate(engine: AsyncEngine, run: str, messages: int) -> float:
    """Messages a second from the first applied effect to the last: the worker's
    start (joining its group, a second or three of pure waiting that varies from round
    to round) is not what tracing costs, and counted in it drowned the difference."""
    first, began = 0, 0.0
    while True:  # polling the database: what the worker writes is what counts
        done = await effects_done(engine, run)
        if not first and done:
            first, began = done, time.monotonic()
        if done >= messages:
            return (done - first) / (time.monotonic() - began)
        await asyncio.sleep(0.05 if first else 0.02)


async def timed(mode: str, endpoint: str, work: Callable[[], Awaitable[float]]) -> float:
    """What ``work`` measures under ``mode``; the spans still queued are flushed after
    the clock stops (what the exporter does during the run is counted)."""
    chosen = use_mode(mode, endpoint)
    try:
        return await work()
    finally:
        tracing.install(None)
        if chosen is not None:
            chosen.shutdown()


async def main(args: argparse.Namespace, endpoint: str) -> None:
    settings = Settings()
    engine = create_engine(settings.database_url, pool_size=24)
    tag = uuid.uuid4().hex[:6]
    relay = {mode: Series(f"relay -> Kafka, tracing {mode}", "msg/s") for mode in MODES}
    consumer = {mode: Series(f"consumer, tracing {mode}", "msg/s") for mode in MODES}
    topic = f"bench.trace.{tag}"
    kafka = KafkaPublisher(settings.kafka_bootstrap)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(
                "CREATE TABLE IF NOT EXISTS bench_effects (run text, message_id uuid, n integer)"
            ))  # fmt: skip
        await ensure_topic(settings.kafka_bootstrap, topic, partitions=PARTITIONS)
        await prefill(settings.kafka_bootstrap, topic, args.messages, args.keys, traceparent)
        modes = list(MODES)
        # One aggregate (and topic) for every drain: each drain empties it before the
        # next fill, and a topic per round would leave dozens of 16-partition topics
        # that slow the broker (and so the later rounds) down.
        agg = f"benchtr{tag}"
        await ensure_topic(settings.kafka_bootstrap, f"outbox.event.{agg}", partitions=PARTITIONS)
        for r in range(args.rounds):
            order = modes[r % 3 :] + modes[: r % 3]  # who runs first rotates
            for mode in order:
                await prefill_outbox(engine, agg, args.events, args.keys)

                async def drain(agg: str = agg) -> float:
                    return await relay_drain(engine, agg, {"kafka": kafka}, "kafka")

                seconds = await timed(mode, endpoint, drain)
                relay[mode].values.append(args.events / seconds)
                print(f"  relay, tracing {mode}: {args.events / seconds:,.0f} msg/s", flush=True)
            for mode in order:

                async def consume() -> float:
                    run = f"rb-trace-{uuid.uuid4().hex[:8]}"
                    worker = Worker(bench_app(run, topic, False, 20), settings)
                    stop = asyncio.Event()
                    task = asyncio.create_task(worker.run(stop))
                    rate = await steady_rate(engine, run, args.messages)
                    stop.set()
                    await task
                    async with engine.begin() as conn:  # later rounds count a small table
                        await conn.execute(text("TRUNCATE bench_effects"))
                    return rate

                rate = await timed(mode, endpoint, consume)
                consumer[mode].values.append(rate)
                print(f"  consumer, tracing {mode}: {rate:,.0f} msg/s", flush=True)
    finally:
        await kafka.stop()
        async with engine.begin() as conn:
            await conn.execute(text("DROP TABLE IF EXISTS bench_effects"))
        await engine.dispose()
        await drop_topics(settings.kafka_bootstrap, (topic, f"outbox.event.benchtr{tag}"))
    comparisons = [
        Comparison("relay: tracing at 10 %/tracing off", relay["10 %"], relay["off"], 0.95),
        Comparison("relay: tracing at 100 %/tracing off", relay["100 %"], relay["off"], None),
        Comparison("consumer: tracing at 10 %/tracing off", consumer["10 %"], consumer["off"],
                   0.95),
        Comparison("consumer: tracing at 100 %/tracing off", consumer["100 %"], consumer["off"],
                   None),
    ]  # fmt: skip
    params = {"events": args.events, "messages": args.messages, "keys": args.keys,
              "rounds": args.rounds, "sampled_share": SAMPLED_SHARE}  # fmt: skip
    print(write("tracing", params, comparisons))


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    port = free_port()
    sink = subprocess.Popen([sys.executable, "-m", "bench.otlp_sink", str(port)])
    try:
        asyncio.run(main(args, f"http://127.0.0.1:{port}"))
    finally:
        sink.terminate()
        sink.wait(10)


if __name__ == "__main__":
    cli()
