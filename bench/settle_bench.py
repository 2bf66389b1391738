"""The polling relay's statements per published row (fetch, settle, and the archive's
retention), before and after issue 16's changes, on one connection each.

Scratch databases on the stack's server, interleaved per round:

- ``before``: migrated to 0009 (the archive as one table: unique ``id``, B-tree on
  ``archived_at``; retention = ``DELETE … WHERE archived_at < cutoff`` plus the
  ``VACUUM`` autovacuum would run after it), default ``plan_cache_mode``: the
  polling relay as it was;
- ``0009``: the same schema with the relay's session settings
  (``RELAY_SESSION_SETTINGS``: one generic plan per statement);
- ``0010-custom``: head (the archive partitioned by day, ``id`` not unique, BRIN on
  ``archived_at``; retention = ``relaybus_archive_purge``, which drops the day's
  partition), default ``plan_cache_mode``;
- ``0010``: head with the relay's session settings: the polling relay as shipped;
- ``delete``: as shipped with the archive off (``RELAYBUS_RELAY_ARCHIVE=false``).

Each round loads ``--rows`` pending rows (UUIDv7 ids, ~400-byte payloads, one
partition), then runs the relay's own ``PostgresOutboxStore.fetch`` and ``settle``
(fenced by a real partition lease) in batches of ``--batch`` rows until the outbox is
empty, then the retention purge. Measured: CPU of every postgres process (``/proc``:
WAL writing and background work count too), µs per row, split into fetch, settle and
purge. The machine is otherwise idle; rounds interleave the variants.

Run (stack up):  python -m bench.settle_bench [--rows 40000 --batch 70 --rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.archive_bench import database_url, drop_database
from bench.cpu import server_cpu_seconds
from bench.relay_bench import prefill_outbox, uuid7_sql
from bench.report import Comparison, Series, amend, write
from relaybus.db import create_engine
from relaybus.locks.postgres import PostgresLock
from relaybus.outbox.store import RELAY_SESSION_SETTINGS, PostgresOutboxStore
from relaybus.settings import Settings

REPO = Path(__file__).resolve().parents[1]
# variant -> (migration, archive on, the relay's session settings)
VARIANTS = {
    "before": ("0009", True, False),
    "0009": ("0009", True, True),
    "0010-custom": ("head", True, False),
    "0010": ("head", True, True),
    "delete": ("head", False, True),
}
OLD_PURGE = "DELETE FROM outbox_archive WHERE archived_at < now() + interval '2 days'"
NEW_PURGE = "SELECT relaybus_archive_purge(now() + interval '2 days')"


async def scratch_database(admin: AsyncEngine, url: str, name: str, revision: str) -> None:
    """Create ``name`` afresh and migrate it to ``revision``."""
    await drop_database(admin, name)
    async with admin.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    env = {**os.environ, "RELAYBUS_DATABASE_URL": url}
    relaybus = str(Path(sys.executable).parent / "relaybus")
    proc = await asyncio.create_subprocess_exec(
        relaybus, "db", "upgrade", revision, cwd=REPO, env=env, stdout=asyncio.subprocess.DEVNULL
    )
    if await proc.wait() != 0:
        raise SystemExit(f"relaybus db upgrade {revision} failed on {name}")


@dataclass
class Costs:
    """CPU µs per row of one variant, a value per round."""

    fetch: list[float] = field(default_factory=list)
    settle: list[float] = field(default_factory=list)
    purge: list[float] = field(default_factory=list)

    def series(self, variant: str, parts: tuple[str, ...]) -> Series:
        values = [sum(v) for v in zip(*(getattr(self, p) for p in parts), strict=True)]
        return Series(f"{variant} {' + '.join(parts)}", "µs/row", values)


async def one_round(engine: AsyncEngine, variant: str, rows: int, batch: int, costs: Costs) -> None:
    """Load ``rows`` rows, fetch and settle them all in ``batch``-row batches, purge."""
    migration, archive, _ = VARIANTS[variant]
    if migration == "head":  # what the relay's purge tick does before any settle
        await PostgresOutboxStore(engine).purge_archive(7)
    await prefill_outbox(engine, "benchsettle", rows, 1000, partitions=1, id_sql=uuid7_sql())
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM ANALYZE outbox"))
    store = PostgresOutboxStore(engine, archive=archive)
    lease = await PostgresLock(engine).try_acquire("outbox-partition-0", 600)
    assert lease is not None, "partition 0 of the scratch database is free"
    fetching = settling = 0.0
    while True:
        t0 = server_cpu_seconds("postgres")
        fetched = await store.fetch(0, batch)
        t1 = server_cpu_seconds("postgres")
        fetching += t1 - t0
        if not fetched.rows:
            break
        ids = [r.message.id for r in fetched.rows]
        moved = await store.settle(lease, ids, [])
        settling += server_cpu_seconds("postgres") - t1
        assert moved == len(ids), (variant, moved)
    t0 = server_cpu_seconds("postgres")
    if archive:
        async with engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(NEW_PURGE if migration == "head" else OLD_PURGE))
            if migration != "head":
                await conn.execute(text("VACUUM outbox_archive"))
    purging = server_cpu_seconds("postgres") - t0
    await PostgresLock(engine).release(lease)
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM outbox"))
    costs.fetch.append(1e6 * fetching / rows)
    costs.settle.append(1e6 * settling / rows)
    costs.purge.append(1e6 * purging / rows)


async def main(args: argparse.Namespace) -> None:
    settings = Settings()
    admin = create_engine(settings.database_url, pool_size=1)
    engines: dict[str, AsyncEngine] = {}
    costs = {v: Costs() for v in VARIANTS}
    try:
        for variant, (revision, _, relay_settings) in VARIANTS.items():
            name = f"relaybus_bench_settle_{variant.replace('-', '_')}"
            url = database_url(settings.database_url, name)
            await scratch_database(admin, url, name, revision)
            engines[variant] = create_engine(
                url,
                pool_size=2,
                server_settings=RELAY_SESSION_SETTINGS if relay_settings else None,
            )
        for r in range(args.rounds):
            for variant, engine in engines.items():
                c = costs[variant]
                await one_round(engine, variant, args.rows, args.batch, c)
                print(f"  round {r + 1} {variant}: fetch {c.fetch[-1]:.1f}, settle "
                      f"{c.settle[-1]:.1f}, purge {c.purge[-1]:.2f} µs/row",
                      flush=True)  # fmt: skip
    finally:
        for variant, engine in engines.items():
            await engine.dispose()
            await drop_database(admin, f"relaybus_bench_settle_{variant.replace('-', '_')}")
        await admin.dispose()
    every = ("fetch", "settle", "purge")
    comparisons = [
        Comparison("relay statements per row (fetch + settle + purge): as shipped / before",
                   costs["0010"].series("0010", every), costs["before"].series("before", every),
                   0.5, higher_is_better=False),
        Comparison("settle + purge per row: partitioned archive (0010) / one table (0009)",
                   costs["0010"].series("0010", ("settle", "purge")),
                   costs["0009"].series("0009", ("settle", "purge")), 1.0,
                   higher_is_better=False),
        Comparison("fetch per row: one generic plan / PostgreSQL's default (0010)",
                   costs["0010"].series("0010", ("fetch",)),
                   costs["0010-custom"].series("0010-custom", ("fetch",)), 1.0,
                   higher_is_better=False),
        Comparison("settle per row: one generic plan / PostgreSQL's default (0010)",
                   costs["0010"].series("0010", ("settle",)),
                   costs["0010-custom"].series("0010-custom", ("settle",)), None,
                   higher_is_better=False),
        Comparison("relay statements per row: archive off / as shipped",
                   costs["delete"].series("delete", every), costs["0010"].series("0010", every),
                   None, higher_is_better=False),
    ]  # fmt: skip
    params = {"rows": args.rows, "batch": args.batch, "rounds": args.rounds}
    md = write("settle", params, comparisons)
    md += "\nMedians, CPU µs per row:\n\n| variant | fetch | settle | purge | total |\n"
    md += "| --- | --- | --- | --- | --- |\n"
    for v, c in costs.items():
        med = statistics.median
        md += (f"| {v} | {med(c.fetch):.1f} | {med(c.settle):.1f} | {med(c.purge):.2f} | "
               f"{med(c.series(v, every).values):.1f} |\n")  # fmt: skip
    amend("settle", md)
    print(md)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=40_000)
    p.add_argument("--batch", type=int, default=70,
                   help="rows per settle (the polling relay's median in `bench cdc`)")  # fmt: skip
    p.add_argument("--rounds", type=int, default=5)
    return p


if __name__ == "__main__":
    asyncio.run(main(parser().parse_args()))
