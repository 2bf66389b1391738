"""Relay scaling: throughput with 1, 2 and 4 relay processes over 1, 4, 16 and 64
outbox partitions, and the CPU that explains it.

Each cell: the relays are started first (idle, partitions leased), then one
transaction commits ``--events`` rows spread over the partitions, and the clock
runs from that commit until the last row has left the outbox. The baseline of a
row is one relay at the same partition count, measured in the same round (rounds
interleaved). The CPU seconds of the relays and of PostgreSQL during the drain come
from ``/proc`` (utime + stime), so a figure bounded by the machine's cores says so.

Run (stack up, database migrated):  python -m bench.scaling_bench [--events 50000]
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
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.cpu import cpu_seconds, pids_named
from bench.relay_bench import prefill_outbox
from bench.report import Comparison, Series, amend, results_dir, write
from relaybus.brokers.kafka_admin import ensure_topic
from relaybus.db import create_engine
from relaybus.settings import Settings

REPO = Path(__file__).resolve().parents[1]
KEYS = 1000


async def left(engine: AsyncEngine, aggregate: str) -> int:
    async with engine.connect() as conn:
        found = await conn.execute(
            text("SELECT count(*) FROM outbox WHERE aggregatetype = :a"), {"a": aggregate}
        )
        return int(found.scalar_one())


async def drained(engine: AsyncEngine, aggregate: str, within: float) -> None:
    """Poll (with a deadline) until no row of ``aggregate`` is left in the outbox."""
    deadline = time.monotonic() + within
    while (remaining := await left(engine, aggregate)) > 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{remaining} rows still in the outbox after {within:.0f} s")
        await asyncio.sleep(0.02)


async def leased(engine: AsyncEngine, partitions: int) -> int:
    async with engine.connect() as conn:
        found = await conn.execute(
            text(
                "SELECT count(*) FROM distributed_locks WHERE name LIKE 'outbox-partition-%' "
                "AND owner IS NOT NULL AND expires_at > clock_timestamp()"
            )
        )
        return min(partitions, int(found.scalar_one()))


async def cell(
    engine: AsyncEngine, bootstrap: str, relays: int, partitions: int, events: int, logs: Path
) -> tuple[float, float, float, float, float]:
    """(events/s, relay CPU s, PostgreSQL CPU s, Kafka CPU s, seconds) for one drain."""
    aggregate = f"benchscale{uuid.uuid4().hex[:6]}"
    await ensure_topic(bootstrap, f"outbox.event.{aggregate}", partitions=16)
    env = {
        **os.environ,
        "RELAYBUS_OUTBOX_PARTITIONS": str(partitions),
        "RELAYBUS_ROUTES": json.dumps([{"pattern": "*", "brokers": ["kafka"]}]),
    }
    procs = []
    for n in range(relays):
        log = (logs / f"relay-{relays}x{partitions}-{n}.log").open("ab")
        procs.append(
            await asyncio.create_subprocess_exec(
                str(Path(sys.executable).parent / "relaybus"),
                "relay",
                cwd=REPO,
                env={**env, "RELAYBUS_RELAY_INSTANCE": f"scale-{n}-{os.getpid()}"},
                stdout=log,
                stderr=log,
            )
        )
    try:
        deadline = time.monotonic() + 60
        while await leased(engine, partitions) < partitions:  # every partition has an owner
            if time.monotonic() > deadline:
                raise TimeoutError("partitions not leased within 60 s")
            await asyncio.sleep(0.1)
        pids = [p.pid for p in procs]
        pg, kafka = pids_named("postgres"), pids_named("java")
        cpu_before, pg_before, kafka_before = cpu_seconds(pids), cpu_seconds(pg), cpu_seconds(kafka)
        await prefill_outbox(engine, aggregate, events, KEYS, partitions)
        began = time.monotonic()
        await drained(engine, aggregate, within=events / 100 + 120)
        elapsed = time.monotonic() - began
        return (
            events / elapsed,
            cpu_seconds(pids) - cpu_before,
            cpu_seconds(pg) - pg_before,
            cpu_seconds(kafka) - kafka_before,
            elapsed,
        )
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            await asyncio.wait_for(proc.wait(), 60)


async def main(args: argparse.Namespace) -> None:
    settings = Settings()
    engine = create_engine(settings.database_url, pool_size=4)
    logs = results_dir() / "scaling-logs"
    logs.mkdir(parents=True, exist_ok=True)
    comparisons: list[Comparison] = []
    rows: list[dict[str, float]] = []
    try:
        for partitions in args.partitions:
            series = {n: Series(f"{n} relay(s), {partitions} partitions", "msg/s")
                      for n in args.relays}  # fmt: skip
            for _ in range(args.rounds):  # interleaved: drift hits every relay count alike
                for n in args.relays:
                    rate, cpu, pg, kafka, seconds = await cell(
                        engine, settings.kafka_bootstrap, n, partitions, args.events, logs
                    )
                    series[n].values.append(rate)
                    rows.append({"relays": n, "partitions": partitions, "rate": rate,
                                 "relay_cpu_s": cpu, "postgres_cpu_s": pg, "kafka_cpu_s": kafka,
                                 "seconds": seconds})  # fmt: skip
                    print(f"  {n} relay(s) x {partitions} partitions: {rate:,.0f} msg/s, "
                          f"relay CPU {cpu:.1f} s, PostgreSQL {pg:.1f} s", flush=True)  # fmt: skip
            base = series[args.relays[0]]
            for n in args.relays[1:]:
                comparisons.append(Comparison(
                    f"{n} relays / 1 relay, {partitions} partitions", series[n], base,
                    1.6 if n == 4 else None,
                ))  # fmt: skip
    finally:
        async with engine.begin() as conn:
            await conn.execute(text("DELETE FROM outbox WHERE aggregatetype LIKE 'benchscale%'"))
            await conn.execute(
                text("DELETE FROM outbox_archive WHERE aggregatetype LIKE 'benchscale%'")
            )
        await engine.dispose()
    params = {"events": args.events, "rounds": args.rounds, "relays": args.relays,
              "partitions": args.partitions, "cpus": os.cpu_count()}  # fmt: skip
    md = write("scaling", params, comparisons)
    md += (
        "\nCPU seconds during each drain (from /proc: utime + stime), and the cores they "
        f"kept busy on average (the machine has {os.cpu_count()}):\n\n"
        "| relays | partitions | msg/s | relay CPU s | PostgreSQL CPU s | Kafka CPU s "
        "| cores busy |\n| --- | --- | --- | --- | --- | --- | --- |\n"
    )
    for r in rows:
        busy = (r["relay_cpu_s"] + r["postgres_cpu_s"] + r["kafka_cpu_s"]) / r["seconds"]
        cpu = f"{r['relay_cpu_s']:.1f} | {r['postgres_cpu_s']:.1f} | {r['kafka_cpu_s']:.1f}"
        md += f"| {r['relays']} | {r['partitions']} | {r['rate']:,.0f} | {cpu} | {busy:.2f} |\n"
    amend("scaling", md, cells=rows)
    print(md)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=50_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--relays", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--partitions", type=int, nargs="+", default=[1, 4, 16, 64])
    return p


if __name__ == "__main__":
    asyncio.run(main(parser().parse_args()))
