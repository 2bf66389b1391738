"""The relay's cost to the database: writers alone, and writers next to the polling
relay, the WAL relay and Debezium, in one run.

Sources: ``alone`` (writers only), ``poll`` (the polling relay as shipped, archive
on), ``poll-delete`` (the polling relay with ``RELAYBUS_RELAY_ARCHIVE=false``),
``wal`` (the WAL relay, deleting published rows), ``wal-keep`` (the WAL relay
without clean-up), ``debezium``.

Each cell: the relay source is started first (polling relay / WAL relay on a fresh
slot / Kafka Connect with Debezium on a fresh slot) and warmed with a burst of
events; then 8 pgbench clients (a C client: the writers cost the server what the
SQL costs, not what a Python driver costs) commit transactions of 100 outbox
inserts, the exact statement ``Outbox.enqueue`` sends, for ``--seconds``; then the
clock waits until every event is on its topic. Measured per cell:

- writer throughput (events/s committed, pgbench's transactions x 100);
- PostgreSQL CPU seconds (``/proc`` of every postgres process: backends, walsenders,
  autovacuum, checkpointer) from the writers' start until the last event is
  relayed, per 1 000 events; the relay's share is that minus writers alone's figure
  in the same round;
- the relay process's CPU (the relay, or Kafka Connect's JVM) per 1 000 events;
- commit → topic latency p50/p99/p99.9: the broker's append time (topics use
  ``LogAppendTime``) minus the row's ``timestamp`` (its transaction's start; the
  transaction of 100 inserts lasts a few ms, the same for every source).

Sources rotate within each round (drift hits all alike). Run (stack up, database
migrated; Maven for the Debezium jars):  python -m bench.cdc_bench [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bench.cpu import cpu_seconds, server_cpu_seconds
from bench.relay_bench import uuid7_sql
from bench.report import Comparison, Series, amend, results_dir, write
from relaybus.brokers.kafka_admin import end_offsets, ensure_topic, topic_partitions
from relaybus.outbox.writer import event_sql
from relaybus.settings import Settings
from relaybus.stack.debezium import KafkaConnect
from relaybus.stack.kafka_broker import KafkaCluster
from relaybus.stack.postgres import server_tool
from relaybus.stack.settings import StackSettings

REPO = Path(__file__).resolve().parents[1]
# "wal-keep": the WAL relay without its clean-up (rows stay, as with Debezium).
# "poll-delete": the polling relay with the archive off (published rows deleted).
SOURCES = ("alone", "poll", "poll-delete", "wal", "wal-keep", "debezium")
PREFIX = {
    "alone": "",
    "poll": "poll.outbox.event.",
    "poll-delete": "polldel.outbox.event.",
    "wal": "wal.outbox.event.",
    "wal-keep": "walkeep.outbox.event.",
}
KEYS = 1000
EVENTS_PER_TX = 100
BENCH_APP = "relaybus-cdc-bench"  # application_name of this benchmark's own connections
PACED_RATE = 2000  # events/s of the latency phase (transactions of 10)
PAYLOAD = json.dumps({"order": 12345, "items": [{"sku": "A-1", "qty": 2}], "pad": "x" * 330})


def writer_script(aggregate: str, events_per_tx: int = EVENTS_PER_TX) -> str:
    """One pgbench transaction: ``events_per_tx`` outbox inserts as ``Outbox.enqueue``
    sends them (key lock, NOTIFY check, insert) for one random key of ``KEYS``."""
    sql = " ".join(event_sql(with_headers=False).split())
    sql = sql.replace(":rb_id", uuid7_sql()).replace(":rb_aggregatetype", f"'{aggregate}'")
    sql = sql.replace(":rb_aggregateid", "('k' || :k)").replace(":rb_type", "'bench.event'")
    sql = sql.replace(":rb_partition", "(:k % 16)").replace(":rb_payload", ":payload")
    # One key per transaction (an aggregate's events): transactions that took the
    # writer's per-key locks on many random keys would deadlock one another.
    return "\n".join(
        [
            r"\set k random(1, " + str(KEYS) + ")",
            "BEGIN;",
            *[f"{sql};"] * events_per_tx,
            "COMMIT;",
            "",
        ]
    )


async def pgbench(
    database_url: str, script: str, seconds: int, clients: int = 8, rate: int = 0
) -> int:
    """Transactions committed by ``clients`` pgbench connections in ``seconds``, flat
    out or at ``rate`` transactions/s (pgbench's Poisson-paced schedule)."""
    url = make_url(database_url)
    paced = [f"-R{rate}"] if rate else []
    process = await asyncio.create_subprocess_exec(
        server_tool("pgbench"), "-n", "-M", "prepared", f"-c{clients}", "-j2", f"-T{seconds}",
        *paced,
        "-f-", f"-Dpayload={PAYLOAD}", f"-h{url.host}", f"-p{url.port or 5432}",
        f"-U{url.username}", url.database or "relaybus",
        env={**os.environ, "PGPASSWORD": url.password or ""},
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output = (await process.communicate(script.encode()))[0].decode()
    processed = failed = None
    for line in output.splitlines():
        if line.startswith("number of transactions actually processed:"):
            processed = int(line.split(":")[1].split("/")[0])
        if line.startswith("number of failed transactions:"):
            failed = int(line.split(":")[1].split()[0])
    if process.returncode != 0 or processed is None or failed:
        raise SystemExit(f"pgbench failed:\n{output}")
    return processed


@dataclass
class Cell:
    source: str
    events: int
    write_seconds: float
    relay_seconds: float
    pg_cpu: float
    relay_cpu: float
    latencies_ms: list[float]
    paced_ms: list[float] = field(default_factory=list)  # latencies at a fixed rate
    walsender_cpu: float = 0.0  # the slot's walsender process (WAL relay, Debezium)
    kafka_cpu: float = 0.0  # the Kafka broker
    writers_cpu: float = 0.0  # pgbench, the writers' client
    relay_sql_ms: float = 0.0  # execution time of the relay's own statements
    writer_sql_ms: float = 0.0  # execution time of the writers' inserts

    relay_backends_cpu: float = 0.0  # the relay's own connections (its SQL)

    @property
    def relay_pg_ms_per_1k(self) -> float:
        """PostgreSQL's CPU for the relay per 1 000 events (ms): its walsender plus the
        backends of its own connections (from /proc: CPU, not statement time, which
        on a saturated machine includes waiting for a core)."""
        return 1e6 * (self.walsender_cpu + self.relay_backends_cpu) / self.events

    @property
    def writer_rate(self) -> float:
        return self.events / self.write_seconds

    def pct(self, q: float, paced: bool = False) -> float:
        values = self.paced_ms if paced else self.latencies_ms
        if not values:
            return float("nan")
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Relaybus:
    """A ``relaybus relay`` subprocess (poll or WAL source) for one cell."""

    def __init__(self, source: str, slot: str, log: Path) -> None:
        self.source, self.slot, self.log = source, slot, log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> int:
        env = {
            **os.environ,
            "RELAYBUS_ROUTES": json.dumps([{"pattern": "*", "brokers": ["kafka"]}]),
            "RELAYBUS_RELAY_SOURCE": "wal" if self.source.startswith("wal") else "poll",
            "RELAYBUS_RELAY_ARCHIVE": str(self.source != "poll-delete").lower(),
            "RELAYBUS_RELAY_WAL_DELETE_PUBLISHED": str(self.source != "wal-keep").lower(),
            "RELAYBUS_RELAY_WAL_SLOT": self.slot,
            "RELAYBUS_KAFKA_TOPIC_PREFIX": PREFIX[self.source],
            "RELAYBUS_RELAY_INSTANCE": f"cdc-{self.source}-{os.getpid()}",
        }
        out = self.log.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "relaybus"), "relay",
            cwd=REPO, env=env, stdout=out, stderr=out,
        )  # fmt: skip
        return self.proc.pid

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(self.proc.wait(), 60)


async def on_topic(bootstrap: str, topic: str) -> int:
    with suppress(Exception):  # the topic may not exist yet
        return sum((await end_offsets(bootstrap, topic)).values())
    return 0


async def wait_for(probe: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {within:.0f} s")
        await asyncio.sleep(0.05)


async def latencies(bootstrap: str, topic: str, sample: int) -> list[float]:
    """Broker append time minus the row's timestamp (ms) of up to ``sample`` records
    spread over the topic's partitions."""
    parts = [TopicPartition(topic, p) for p in await topic_partitions(bootstrap, topic)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    out: list[float] = []
    try:
        consumer.assign(parts)
        ends = await consumer.end_offsets(parts)
        for tp in parts:
            await consumer.seek_to_beginning(tp)
        remaining = {tp for tp in parts if ends[tp] > 0}
        deadline = time.monotonic() + 120
        while remaining and time.monotonic() < deadline:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batch.items():
                for r in records:
                    if r.offset >= ends[tp]:
                        continue
                    headers = {k: v.decode() for k, v in r.headers}
                    out.append(r.timestamp - _occurred_ms(headers["occurred_at"]))
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        if remaining:
            print(f"  (latency sample of {topic} cut short: {len(out)} records read)")
    finally:
        await consumer.stop()
    step = max(1, len(out) // sample)
    return out[::step]


def _occurred_ms(value: str) -> float:
    if value.isdigit():  # Debezium: epoch microseconds
        return int(value) / 1000
    from datetime import UTC, datetime

    return datetime.fromisoformat(value.rstrip("Z")).replace(tzinfo=UTC).timestamp() * 1000


@asynccontextmanager
async def relay_source(source: str, engine: AsyncEngine, logs: Path) -> AsyncIterator[list[int]]:
    """The source running (pids of its processes); stopped and its slot dropped after."""
    slot = f"bench_{uuid.uuid4().hex[:8]}"
    if source == "alone":
        yield []
    elif source == "debezium":
        connect = KafkaConnect(StackSettings())
        await asyncio.to_thread(connect.start)
        try:
            yield [connect.pid() or 0]
        finally:
            await asyncio.to_thread(connect.stop)
            await drop_slot(engine, StackSettings().debezium_slot)
            (connect.home / "connect.offsets").unlink(missing_ok=True)
    else:
        relay = Relaybus(source, slot, logs / f"{source}.log")
        pid = await relay.start()
        try:
            if source.startswith("wal"):
                await wait_for(lambda: slot_active(engine, slot), 60, "WAL relay streaming")
            yield [pid]
        finally:
            await relay.stop()
            if source.startswith("wal"):
                await drop_slot(engine, slot)


async def slot_active(engine: AsyncEngine, slot: str) -> bool:
    async with engine.connect() as conn:
        found = await conn.execute(
            text("SELECT active FROM pg_replication_slots WHERE slot_name = :s"), {"s": slot}
        )
        return bool(found.scalar())


async def drop_slot(engine: AsyncEngine, slot: str) -> None:
    async def dropped() -> bool:
        async with engine.begin() as conn:
            row = (await conn.execute(
                text("SELECT active FROM pg_replication_slots WHERE slot_name = :s"), {"s": slot}
            )).first()  # fmt: skip
            if row is None:
                return True
            if row.active:
                return False
            await conn.execute(text("SELECT pg_drop_replication_slot(:s)"), {"s": slot})
            return True

    await wait_for(dropped, 30, f"slot {slot} dropped")


def topic_of(source: str, aggregate: str) -> str:
    prefix = StackSettings().debezium_topic_prefix if source == "debezium" else PREFIX[source]
    return f"{prefix}{aggregate}"


async def cell(
    source: str,
    engine: AsyncEngine,
    settings: Settings,
    seconds: int,
    logs: Path,
    warmup: int,
    paced_seconds: int,
) -> Cell:
    bootstrap = settings.kafka_bootstrap
    async with relay_source(source, engine, logs) as pids:
        # Warm-up: JIT, connections, the first topic's metadata.
        warm = f"benchcdcwarm{uuid.uuid4().hex[:6]}"
        if source != "alone":
            await ensure_topic(bootstrap, topic_of(source, warm), partitions=16)
            warm_events = EVENTS_PER_TX * await pgbench(
                settings.database_url, writer_script(warm), warmup
            )
            await wait_for(
                lambda: _relayed(engine, bootstrap, source, warm, warm_events), 300, "warm-up"
            )
        aggregate = f"benchcdc{uuid.uuid4().hex[:8]}"
        topic = topic_of(source, aggregate)
        if source != "alone":
            await ensure_topic(bootstrap, topic, partitions=16,
                               config={"message.timestamp.type": "LogAppendTime"})  # fmt: skip
        walsenders = await walsender_pids(engine)
        backends_before = {p: cpu_seconds([p]) for p in await relay_backend_pids(engine)}
        await reset_statements(engine)
        pg_before, relay_before = server_cpu_seconds("postgres"), cpu_seconds(pids)
        walsender_before = cpu_seconds(walsenders)
        kafka_pids = [p for p in [KafkaCluster.single(StackSettings()).nodes[0].pid()] if p]
        reap_exited_children()
        kafka_before, children_before = cpu_seconds(kafka_pids), children_cpu()
        began = time.monotonic()
        transactions = await pgbench(settings.database_url, writer_script(aggregate), seconds)
        writers_cpu = children_cpu() - children_before  # pgbench has exited: reaped
        written = time.monotonic()
        events = transactions * EVENTS_PER_TX
        if source != "alone":
            await wait_for(
                lambda: _relayed(engine, bootstrap, source, aggregate, events), 600, "relayed"
            )
        done = time.monotonic()
        pg_cpu = server_cpu_seconds("postgres") - pg_before
        relay_cpu = cpu_seconds(pids) - relay_before
        walsender_cpu = cpu_seconds(walsenders) - walsender_before
        kafka_cpu = cpu_seconds(kafka_pids) - kafka_before
        backends_cpu = sum(
            cpu_seconds([p]) - backends_before.get(p, 0.0) for p in await relay_backend_pids(engine)
        )
        writer_ms, relay_ms = await statement_split(engine)
        paced: list[float] = []
        if source in ("poll", "poll-delete", "wal"):
            # Steady state before the latency phase: the relay has also finished the
            # table's clean-up of the flat-out phase (the WAL relay's deletes pass
            # through the walsender's decoding like any change).
            await wait_for(lambda: _no_rows(engine, aggregate), 300, "table cleaned up")
        if source != "alone" and paced_seconds:
            # Latency below saturation: PACED_RATE events/s in transactions of 10.
            calm = f"benchcdcpaced{uuid.uuid4().hex[:6]}"
            await ensure_topic(bootstrap, topic_of(source, calm), partitions=16,
                               config={"message.timestamp.type": "LogAppendTime"})  # fmt: skip
            tx = await pgbench(settings.database_url, writer_script(calm, 10), paced_seconds,
                               clients=4, rate=PACED_RATE // 10)  # fmt: skip
            await wait_for(
                lambda: _relayed(engine, bootstrap, source, calm, tx * 10), 300, "paced relayed"
            )
            paced = await latencies(bootstrap, topic_of(source, calm), 20_000)
    lat = await latencies(bootstrap, topic, 20_000) if source != "alone" else []
    await clean(engine, aggregate)
    return Cell(
        source=source,
        events=events,
        write_seconds=written - began,
        relay_seconds=done - began,
        pg_cpu=pg_cpu,
        relay_cpu=relay_cpu,
        latencies_ms=lat,
        paced_ms=paced,
        walsender_cpu=walsender_cpu,
        kafka_cpu=kafka_cpu,
        writers_cpu=writers_cpu,
        relay_sql_ms=relay_ms,
        writer_sql_ms=writer_ms,
        relay_backends_cpu=backends_cpu,
    )


def reap_exited_children() -> None:
    """Reap children that exited earlier (Kafka Connect's JVM, stopped by pid, stays
    a zombie until some wait): their CPU must not land in the next window."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def children_cpu() -> float:
    """CPU seconds of this process's exited (reaped) children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def relay_backend_pids(engine: AsyncEngine) -> list[int]:
    """Client backends that are neither pgbench's nor this benchmark's: the relay's
    (its pool, Debezium's JDBC connection)."""
    async with engine.connect() as conn:
        rows = await conn.execute(text(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_type = 'client backend' AND pid <> pg_backend_pid() "
            f"AND application_name NOT IN ('pgbench', '{BENCH_APP}')"
        ))  # fmt: skip
        return [int(r.pid) for r in rows]


async def walsender_pids(engine: AsyncEngine) -> list[int]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT pid FROM pg_stat_replication"))
        return [int(r.pid) for r in rows]


async def statement_split(engine: AsyncEngine) -> tuple[float, float]:
    """(writers' ms, relay's ms) of statement execution since the reset: the writers'
    outbox insert, and everything else but this benchmark's own bookkeeping."""
    async with engine.connect() as conn:
        row = (await conn.execute(text(
            "SELECT coalesce(sum(total_exec_time) FILTER (WHERE query LIKE 'WITH rb_key_lock%'), 0)"
            " AS writer, coalesce(sum(total_exec_time) FILTER (WHERE query NOT LIKE "
            "'WITH rb_key_lock%' AND query NOT LIKE '%pg_stat_%' AND query NOT LIKE "
            "'%pg_replication_slots%' AND query NOT LIKE '%benchcdc%'), 0) AS relay "
            "FROM pg_stat_statements"
        ))).one()  # fmt: skip
    return float(row.writer), float(row.relay)


async def _relayed(
    engine: AsyncEngine, bootstrap: str, source: str, aggregate: str, events: int
) -> bool:
    return await on_topic(bootstrap, topic_of(source, aggregate)) >= events


async def _no_rows(engine: AsyncEngine, aggregate: str) -> bool:
    async with engine.connect() as conn:
        found = await conn.execute(
            text("SELECT 1 FROM outbox WHERE aggregatetype = :a LIMIT 1"), {"a": aggregate}
        )
        return found.first() is None


async def clean(engine: AsyncEngine, aggregate: str) -> None:
    """Rows only a CDC source read stay in the table: remove the bench's rows."""
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM outbox WHERE aggregatetype LIKE 'benchcdc%'"))
        await conn.execute(text("DELETE FROM outbox_archive WHERE aggregatetype LIKE 'benchcdc%'"))
    del aggregate


async def statement_costs(engine: AsyncEngine) -> list[dict[str, Any]]:
    """The costliest statements since the last reset (pg_stat_statements)."""
    async with engine.connect() as conn:
        rows = await conn.execute(text(
            "SELECT calls, rows, round(total_exec_time::numeric, 1) AS ms, "
            "left(regexp_replace(query, '\\s+', ' ', 'g'), 140) AS query "
            "FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 8"
        ))  # fmt: skip
        return [dict(m) for m in rows.mappings()]


async def reset_statements(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("SELECT pg_stat_statements_reset()"))


async def main(args: argparse.Namespace) -> None:
    settings = Settings()
    engine = create_async_engine(
        settings.database_url,
        pool_size=4,
        connect_args={"server_settings": {"application_name": BENCH_APP}},
    )
    logs = results_dir() / "cdc-logs"
    logs.mkdir(parents=True, exist_ok=True)
    cells: list[Cell] = []
    profiles: dict[str, list[dict[str, Any]]] = {}
    try:
        for _ in range(args.rounds):
            for source in args.sources:
                c = await cell(source, engine, settings, args.seconds, logs, args.warmup,
                               args.paced_seconds)  # fmt: skip
                profiles[source] = await statement_costs(engine)
                cells.append(c)
                print(f"  {source}: writers {c.writer_rate:,.0f} ev/s, PostgreSQL "
                      f"{1000 * c.pg_cpu / c.events:.3f} CPU-s/1k ev (for the relay "
                      f"{c.relay_pg_ms_per_1k:.1f} ms/1k ev), relay "
                      f"{1000 * c.relay_cpu / c.events:.3f} CPU-s/1k ev, p50 {c.pct(0.5):.0f} "
                      f"p99 {c.pct(0.99):.0f} ms; at {PACED_RATE}/s p50 "
                      f"{c.pct(0.5, True):.0f} p99 {c.pct(0.99, True):.0f} ms",
                      flush=True)  # fmt: skip
    finally:
        await clean(engine, "")
        await engine.dispose()
    report(args, cells, profiles)


def report(args: argparse.Namespace, cells: list[Cell], profiles: dict[str, Any]) -> None:
    def series(source: str, name: str, unit: str, value: Any) -> Series:
        return Series(f"{source} {name}", unit, [value(c) for c in cells if c.source == source])

    def pg_share(c: Cell) -> float:
        """PostgreSQL CPU-ms per 1000 events beyond what writers alone cost."""
        alone = [x for x in cells if x.source == "alone"]
        base = statistics.median(1000 * x.pg_cpu / x.events for x in alone) if alone else 0.0
        return max(1e-6, 1000 * 1000 * c.pg_cpu / c.events - 1000 * base)

    rate = {s: series(s, "writers", "ev/s", lambda c: c.writer_rate) for s in args.sources}
    share = {s: series(s, "PostgreSQL for the relay", "ms/1k ev", lambda c: c.relay_pg_ms_per_1k)
             for s in args.sources if s != "alone"}  # fmt: skip
    p99 = {s: series(s, f"p99 at {PACED_RATE}/s", "ms", lambda c: c.pct(0.99, True))
           for s in args.sources if s != "alone"}  # fmt: skip
    comparisons = []
    if "alone" in rate:
        for s in ("poll", "poll-delete", "wal", "wal-keep", "debezium"):
            if s in rate:
                target = 0.9 if s == "wal" else None
                comparisons.append(Comparison(f"writers + {s} / writers alone", rate[s],
                                              rate["alone"], target))  # fmt: skip
    if "wal" in share and "debezium" in share:
        comparisons.append(Comparison("PostgreSQL CPU per event: WAL relay / Debezium",
                                      share["wal"], share["debezium"], 2.0,
                                      higher_is_better=False))  # fmt: skip
        label = f"commit → topic p99 at {PACED_RATE} ev/s: WAL relay / Debezium"
        comparisons.append(Comparison(label, p99["wal"], p99["debezium"], 1.0,
                                      higher_is_better=False))  # fmt: skip
    if "wal-keep" in share and "debezium" in share:
        comparisons.append(Comparison("PostgreSQL CPU per event: WAL relay without clean-up / "
                                      "Debezium", share["wal-keep"], share["debezium"], 2.0,
                                      higher_is_better=False))  # fmt: skip
    if "poll" in share and "poll-delete" in share:
        comparisons.append(Comparison("PostgreSQL CPU per event: polling without / with "
                                      "the archive", share["poll-delete"], share["poll"], None,
                                      higher_is_better=False))  # fmt: skip
    if "poll" in share and "wal" in share:
        comparisons.append(Comparison("PostgreSQL CPU per event: polling / WAL relay",
                                      share["poll"], share["wal"], None,
                                      higher_is_better=False))  # fmt: skip
    params = {"seconds": args.seconds, "rounds": args.rounds, "writers": 8,
              "events_per_tx": EVENTS_PER_TX, "keys": KEYS,
              "payload_bytes": len(PAYLOAD)}  # fmt: skip
    md = write("cdc", params, comparisons)
    raw = [
        {k: v for k, v in vars(c).items() if k not in ("latencies_ms", "paced_ms")} for c in cells
    ]
    md += (
        "\nEvery source (medians over rounds). 'PostgreSQL CPU' counts every postgres "
        "process (exited backends included) from the writers' start until the last event "
        "reached its topic; 'beyond writers' subtracts writers alone's per-event figure. "
        "'For the relay' is PostgreSQL's CPU for the relay: its walsender plus the "
        "backends of the relay's own connections (/proc), per 1 000 events; 'relay SQL' "
        "and 'writer SQL' are statement execution times (pg_stat_statements; on a "
        "saturated machine they include waiting for a core).\n\n"
        "| source | writer ev/s | PostgreSQL CPU-s / 1k ev | beyond writers CPU-ms / 1k ev "
        "| for the relay CPU-ms / 1k ev (walsender + relay backends) | relay SQL ms / 1k ev "
        "| writer SQL ms / 1k ev "
        "| relay process CPU-s / 1k ev | flat out: p50 / p99 / p99.9 ms "
        f"| at {PACED_RATE} ev/s: p50 / p99 / p99.9 ms |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    )
    rows = []
    for s in args.sources:
        mine = [c for c in cells if c.source == s]
        med = statistics.median
        row = {
            "source": s,
            "writer_rate": med(c.writer_rate for c in mine),
            "pg_cpu_s_per_1k": med(1000 * c.pg_cpu / c.events for c in mine),
            "pg_beyond_writers_ms_per_1k": med(pg_share(c) for c in mine) if s != "alone" else 0,
            "relay_cpu_s_per_1k": med(1000 * c.relay_cpu / c.events for c in mine),
            "for_relay_ms_per_1k": med(c.relay_pg_ms_per_1k for c in mine),
            "walsender_ms_per_1k": med(1e6 * c.walsender_cpu / c.events for c in mine),
            "relay_backends_ms_per_1k": med(1e6 * c.relay_backends_cpu / c.events for c in mine),
            "relay_sql_ms_per_1k": med(1000 * c.relay_sql_ms / c.events for c in mine),
            "writer_sql_ms_per_1k": med(1000 * c.writer_sql_ms / c.events for c in mine),
            "p50_ms": med(c.pct(0.5) for c in mine),
            "p99_ms": med(c.pct(0.99) for c in mine),
            "p999_ms": med(c.pct(0.999) for c in mine),
            "kafka_cpu_s_per_1k": med(1000 * c.kafka_cpu / c.events for c in mine),
            "writers_cpu_s_per_1k": med(1000 * c.writers_cpu / c.events for c in mine),
            "cores_busy": med(
                (c.pg_cpu + c.relay_cpu + c.kafka_cpu + c.writers_cpu) / c.relay_seconds
                for c in mine
            ),
            "paced_p50_ms": med(c.pct(0.5, True) for c in mine),
            "paced_p99_ms": med(c.pct(0.99, True) for c in mine),
            "paced_p999_ms": med(c.pct(0.999, True) for c in mine),
        }
        rows.append(row)
        md += (f"| {s} | {row['writer_rate']:,.0f} | {row['pg_cpu_s_per_1k']:.3f} | "
               f"{row['pg_beyond_writers_ms_per_1k']:.1f} | {row['for_relay_ms_per_1k']:.1f} "
               f"({row['walsender_ms_per_1k']:.1f} + {row['relay_backends_ms_per_1k']:.1f}) | "
               f"{row['relay_sql_ms_per_1k']:.1f} | "
               f"{row['writer_sql_ms_per_1k']:.1f} | {row['relay_cpu_s_per_1k']:.3f} | "
               f"{row['p50_ms']:.0f} / {row['p99_ms']:.0f} / {row['p999_ms']:.0f} | "
               f"{row['paced_p50_ms']:.0f} / {row['paced_p99_ms']:.0f} / "
               f"{row['paced_p999_ms']:.0f} |\n")  # fmt: skip
    md += (
        "\nWhere the machine's CPU went (CPU-s per 1 000 events, from the writers' start "
        f"until the last event was relayed; the machine has {os.cpu_count()} cores):\n\n"
        "| source | PostgreSQL | pgbench (writers' client) | relay process | Kafka broker "
        "| total | cores busy |\n| --- | --- | --- | --- | --- | --- | --- |\n"
    )
    for row in rows:
        total = (row["pg_cpu_s_per_1k"] + row["writers_cpu_s_per_1k"]
                 + row["relay_cpu_s_per_1k"] + row["kafka_cpu_s_per_1k"])  # fmt: skip
        md += (f"| {row['source']} | {row['pg_cpu_s_per_1k']:.3f} | "
               f"{row['writers_cpu_s_per_1k']:.3f} | {row['relay_cpu_s_per_1k']:.3f} | "
               f"{row['kafka_cpu_s_per_1k']:.3f} | {total:.3f} | "
               f"{row['cores_busy']:.2f} |\n")  # fmt: skip
    md += "\nCostliest statements of each source's last cell (pg_stat_statements):\n"
    for s, stmts in profiles.items():
        md += f"\n{s}:\n\n| calls | rows | total ms | statement |\n| --- | --- | --- | --- |\n"
        for st in stmts:
            query = str(st["query"]).replace("|", "\\|")
            md += f"| {st['calls']} | {st['rows']} | {st['ms']} | `{query}` |\n"
    costs = {k: [{**x, "ms": float(x["ms"])} for x in v] for k, v in profiles.items()}
    amend("cdc", md, cells=rows, raw_cells=raw, profiles=costs)
    print(md)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3, help="seconds of writes before measuring")
    p.add_argument("--paced-seconds", type=int, default=8,
                   help=f"seconds of the latency phase at {PACED_RATE} events/s")  # fmt: skip
    p.add_argument("--sources", nargs="+", choices=SOURCES, default=list(SOURCES))
    return p


if __name__ == "__main__":
    asyncio.run(main(parser().parse_args()))
