"""Does a large archive slow the relay's drain or ``relaybus outbox status``?

Two scratch databases on the same PostgreSQL server, migrated to head: one keeps an
empty archive (the baseline), the other's archive is filled to 1 M and then 10 M
published rows (~200-byte payloads, then VACUUM ANALYZE as a long-lived archive
would be; ids are time-ordered UUIDv7 like the ones ``Outbox.enqueue`` makes, as are
those of the rows drained). At each size, rounds interleaved with the baseline's:

- the in-process relay (archive on, as shipped) drains ``--events`` pre-filled rows
  to Kafka: events/s;
- ``OutboxAdmin.status()`` (what ``relaybus outbox status`` runs): median ms of
  ``--status-calls`` calls, after a VACUUM of the (drained) outbox; and, for
  information, the exact ``count(*) ... GROUP BY outcome`` the status used to run
  before migration 0008.

Both scratch databases are dropped at the end (``--keep`` keeps them, for re-runs
without the 10 M-row fill).

Run (stack up):  python -m bench.archive_bench [--sizes 1000000 10000000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.relay_bench import PAD, prefill_outbox, relay_drain, uuid7_sql
from bench.report import Comparison, Series, amend, write
from relaybus.brokers.kafka import KafkaPublisher
from relaybus.brokers.kafka_admin import ensure_topic
from relaybus.db import create_engine
from relaybus.outbox.admin import OutboxAdmin
from relaybus.settings import Settings

REPO = Path(__file__).resolve().parents[1]
KEYS = 1000
FILL_CHUNK = 500_000
# Archived ids as the relay archives them: UUIDv7 of their (older) write time.
ARCHIVED_ID = uuid7_sql(
    "floor(extract(epoch FROM now() - make_interval(secs => CAST(:last AS bigint) - g)) * 1000)"
)
OLD_STATUS = "SELECT outcome, count(*) FROM outbox_archive GROUP BY outcome"


def database_url(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


async def create_database(admin: AsyncEngine, url: str, name: str, reuse: bool) -> None:
    """Create ``name`` (unless ``reuse`` and it exists) and migrate it to head."""
    async with admin.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        exists = (
            await conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
        ).scalar()
        if exists and not reuse:
            await drop_database(admin, name)
        if not exists or not reuse:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
    env = {**os.environ, "RELAYBUS_DATABASE_URL": url}
    relaybus = str(Path(sys.executable).parent / "relaybus")
    upgrade = await asyncio.create_subprocess_exec(relaybus, "db", "upgrade", cwd=REPO, env=env)
    if await upgrade.wait() != 0:
        raise SystemExit(f"relaybus db upgrade failed on {name}")


async def drop_database(admin: AsyncEngine, name: str) -> None:
    """Drop ``name`` once nobody uses it (without FORCE: the relaybus role may not
    terminate an autovacuum worker; DROP DATABASE itself stops those)."""
    deadline = time.monotonic() + 60
    async with admin.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        while True:
            try:
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
                return
            except DBAPIError as error:  # ObjectInUse: a session is still closing
                if time.monotonic() > deadline:
                    raise
                print(f"  {name} still in use ({error.orig}); retrying", flush=True)
                await asyncio.sleep(0.5)


async def archive_rows(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT count(*) FROM outbox_archive"))).scalar_one())


async def fill_archive(engine: AsyncEngine, target: int) -> None:
    """Add published rows until the archive holds ``target``; then VACUUM ANALYZE."""
    have = await archive_rows(engine)
    began = time.monotonic()
    while have < target:
        n = min(FILL_CHUNK, target - have)
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    f"""
                    INSERT INTO outbox_archive (id, aggregatetype, aggregateid, type, payload,
                        timestamp, headers, partition, sequence, attempts, outcome, archived_at)
                    SELECT {ARCHIVED_ID}, 'benchold', 'k' || (g % 1000), 'bench.event',
                           jsonb_build_object('n', g, 'pad', CAST(:pad AS text)),
                           now() AT TIME ZONE 'utc', '{{}}'::jsonb, g % 16, g, 1, 'published',
                           now() - make_interval(secs => CAST(:last AS bigint) - g)
                      FROM generate_series(CAST(:start AS bigint), CAST(:last AS bigint)) AS g
                    """
                ),
                {"pad": PAD, "start": have, "last": have + n - 1},
            )
        have += n
        print(f"  archive: {have:,} rows ({time.monotonic() - began:.0f} s)", flush=True)
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM ANALYZE outbox_archive"))


async def status_ms(engine: AsyncEngine, calls: int) -> float:
    """Median milliseconds of ``OutboxAdmin.status()``."""
    admin = OutboxAdmin(engine)
    async with engine.connect() as conn:  # the drain's dead outbox rows: alike in both
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM outbox"))
    times = []
    for _ in range(calls):
        began = time.perf_counter()
        await admin.status()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


async def old_status_ms(engine: AsyncEngine) -> float:
    async with engine.connect() as conn:
        began = time.perf_counter()
        await conn.execute(text(OLD_STATUS))
        return (time.perf_counter() - began) * 1000


async def drain_rate(engine: AsyncEngine, bootstrap: str, events: int) -> float:
    aggregate = f"benchar{uuid.uuid4().hex[:6]}"
    await ensure_topic(bootstrap, f"outbox.event.{aggregate}", partitions=16)
    await prefill_outbox(engine, aggregate, events, KEYS, id_sql=uuid7_sql())
    seconds = await relay_drain(engine, aggregate, {"kafka": KafkaPublisher(bootstrap)}, "kafka")
    return events / seconds


async def main(args: argparse.Namespace) -> None:
    settings = Settings()
    admin = create_engine(settings.database_url, pool_size=1)
    names = {"empty": "relaybus_bench_archive_empty", "big": "relaybus_bench_archive_big"}
    urls = {k: database_url(settings.database_url, v) for k, v in names.items()}
    for key, name in names.items():
        await create_database(admin, urls[key], name, reuse=args.keep)
    engines = {k: create_engine(u, pool_size=4) for k, u in urls.items()}
    comparisons: list[Comparison] = []
    old_counts: list[tuple[int, float, float]] = []
    try:
        for size in args.sizes:
            await fill_archive(engines["big"], size)
            drains = {k: Series(f"drain, archive {label}", "msg/s")
                      for k, label in (("empty", "0"), ("big", f"{size:,}"))}  # fmt: skip
            status = {k: Series(f"outbox status, archive {label}", "ms")
                      for k, label in (("empty", "0"), ("big", f"{size:,}"))}  # fmt: skip
            for _ in range(args.rounds):  # interleaved: drift hits both archives alike
                for key in ("empty", "big"):
                    rate = await drain_rate(engines[key], settings.kafka_bootstrap, args.events)
                    drains[key].values.append(rate)
                    status[key].values.append(await status_ms(engines[key], args.status_calls))
                    print(f"  archive {key} ({size:,}): drain {rate:,.0f} msg/s, status "
                          f"{status[key].values[-1]:.2f} ms", flush=True)  # fmt: skip
            comparisons.append(
                Comparison(f"relay drain, archive {size:,} / empty", drains["big"],
                           drains["empty"], 0.9)
            )  # fmt: skip
            comparisons.append(
                Comparison(f"outbox status time, archive {size:,} / empty", status["big"],
                           status["empty"], 1.5, higher_is_better=False)
            )  # fmt: skip
            old_counts.append(
                (size, await old_status_ms(engines["empty"]), await old_status_ms(engines["big"]))
            )
    finally:
        for engine in engines.values():
            await engine.dispose()
        if not args.keep:
            for name in names.values():
                await drop_database(admin, name)
        await admin.dispose()
    params = {"events": args.events, "rounds": args.rounds, "sizes": args.sizes,
              "status_calls": args.status_calls}  # fmt: skip
    md = write("archive", params, comparisons)
    md += (
        "\nFor comparison, the exact `SELECT outcome, count(*) FROM outbox_archive GROUP BY "
        "outcome` that `outbox status` ran before migration 0008 (one warm call):\n\n"
        "| archive rows | empty archive, ms | full archive, ms |\n| --- | --- | --- |\n"
    )
    for size, empty_ms, big_ms in old_counts:
        md += f"| {size:,} | {empty_ms:.1f} | {big_ms:,.1f} |\n"
    amend("archive", md)
    print(md)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=50_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    p.add_argument("--status-calls", type=int, default=20)
    p.add_argument("--keep", action="store_true", help="keep the scratch databases")
    return p


if __name__ == "__main__":
    asyncio.run(main(parser().parse_args()))
