"""The fault matrix's runs: a keyed workload through real relays and workers, faults
injected on a schedule, a final drain, and the history checked.

``run`` is shared by the CI's short scenarios (tests/chaos/test_matrix.py) and
``make chaos`` (tests/chaos/matrix.py, the full sizes, which rewrites the table in
docs/guarantees.md). A scenario is a fault: a coroutine given the run and the fault's
number, returning what to print about it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.brokers.kafka_admin import ensure_topic, list_topics
from relaybus.db.errors import database_unavailable
from relaybus.ids import uuid7
from relaybus.settings import Settings
from relaybus.stack.kafka_broker import KafkaCluster
from relaybus.stack.postgres import Postgres
from relaybus.stack.settings import StackSettings
from tests.chaos.faults import paused, stopped, with_children
from tests.chaos.history import History, Report, Seen, check
from tests.chaos.network import SCHEDULE, ToxiproxyAPI, proxied_env
from tests.chaos.workload import KeyedWriter
from tests.integration.test_trust_boundary import hostile_records
from tests.support.consumer_apps import TEST_TYPE
from tests.support.consumerdata import effects, prepare_effects
from tests.support.foreign import kcat_produce
from tests.support.outboxdata import pending, read_topic
from tests.support.poll import eventually
from tests.support.relayproc import RelaybusProcess, relay_fleet

log = logging.getLogger(__name__)
T = TypeVar("T")

PARTITIONS = 6
KAFKA_DOWN_S = 3.0
POSTGRES_PAUSE_S = 5.0


@dataclass
class Run:
    """One scenario's processes and records while it runs."""

    settings: Settings
    engine: AsyncEngine
    tmp: Path
    name: str
    topic: str
    relays: list[RelaybusProcess] = field(default_factory=list)
    workers: list[RelaybusProcess] = field(default_factory=list)
    max_backlog: int = 0
    poison_per_fault: int = 0
    poison: set[str] = field(default_factory=set)  # ids of injected hostile records
    worker_env: dict[str, str] = field(default_factory=dict)  # S6: PostgreSQL via a proxy

    def worker(self, i: int) -> RelaybusProcess:
        env = {
            **self.worker_env,
            "RELAYBUS_TEST_NAME": self.name,
            "RELAYBUS_TEST_BROKER": "kafka",
            "RELAYBUS_TEST_SOURCE": self.topic,
            "RELAYBUS_TEST_ORDERED": "1",
            # A killed member leaves the group after this; its partitions wait for it.
            "RELAYBUS_KAFKA_SESSION_TIMEOUT_MS": "6000",
        }
        return RelaybusProcess(
            f"{self.name}-w{i}",
            env,
            self.tmp / f"{self.name}-w{i}.log",
            ["worker", "tests.support.consumer_apps:effects"],
        )


Fault = Callable[[Run, int], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Result:
    scenario: str
    report: Report
    figures: dict[str, Any]


async def _effects(engine: AsyncEngine, consumer: str) -> list[tuple[str, str, float]]:
    """(message id, key, when applied) of ``consumer``'s effects, in the order applied."""
    return [(str(e["message_id"]), e["key"], e["at"]) for e in await effects(engine, consumer)]


def max_gap(times: list[float], start: float, end: float) -> float:
    """The longest stretch in [start, end] with nothing in ``times``."""
    inside = [start, *sorted(t for t in times if start <= t <= end), end]
    return max(b - a for a, b in itertools.pairwise(inside))


def longest_key_pause(events: list[tuple[str, float]], start: float, end: float) -> float:
    """The longest any key went without an event (key, time) in [start, end]: how long
    the fault held back the keys it touched (a key gets an event every keys/rate s)."""
    by_key: dict[str, list[float]] = {}
    for key, t in events:
        by_key.setdefault(key, []).append(t)
    return max((max_gap(ts, start, end) for ts in by_key.values()), default=end - start)


async def run(
    scenario: str,
    settings: Settings,
    engine: AsyncEngine,
    tmp: Path,
    fault: Fault,
    *,
    messages: int,
    faults: int,
    fault_every: float,
    keys: int = 16,
    relays: int = 2,
    workers: int = 2,
    observe: Callable[[Run], Coroutine[Any, Any, None]] | None = None,
) -> Result:
    """Write ``messages`` over ``keys`` keys at the rate that spreads them over the
    faults, inject ``faults`` faults ``fault_every`` seconds apart, drain, check.
    ``observe`` (if given) runs alongside until the drain, e.g. to sample processes."""
    name = f"{scenario.lower()}{uuid7().hex[-10:]}"
    topic = f"outbox.event.{name}"
    await ensure_topic(
        settings.kafka_bootstrap,
        topic,
        partitions=PARTITIONS,
        config={"message.timestamp.type": "LogAppendTime"},
    )
    await prepare_effects(engine)
    duration = fault_every * (faults + 1)
    per_txn = 10
    writer = KeyedWriter(
        engine,
        name,
        keys=keys,
        per_txn=per_txn,
        interval=per_txn * duration / messages,
        event_type=TEST_TYPE,
        limit=messages,
    )
    r = Run(
        settings,
        engine,
        tmp,
        name,
        topic,
        poison_per_fault=max(1, messages // 100 // max(1, faults)),
    )
    relay_env: dict[str, str] = {}
    if scenario in PROXIED:
        await ToxiproxyAPI().reset()  # no proxy left cut or poisoned by an earlier run
        relay_env, r.worker_env = proxied_env(settings.database_url)
    fault_figures: list[dict[str, Any]] = []
    started = time.time()
    with relay_fleet(tmp, [{"pattern": "*", "brokers": ["kafka"]}], **relay_env) as fleet:
        r.relays = [fleet.start(f"{name}-r{i}") for i in range(relays)]
        r.workers = [r.worker(i) for i in range(workers)]
        for w in r.workers:
            w.start()
        writing = asyncio.create_task(writer.run())
        sampling = asyncio.create_task(_sample_backlog(r))
        observing = asyncio.create_task(observe(r) if observe else asyncio.sleep(0))
        try:
            for i in range(faults):
                await asyncio.sleep(fault_every)  # the schedule is the scenario
                fault_figures.append({"at": time.time(), **await fault(r, i)})
            await writing

            async def drained() -> bool:
                return await _unless_db_down(pending(engine, name), -1) == 0

            wanted: set[str] = set()

            async def applied() -> bool:
                return wanted <= {
                    m for m, _, _ in await _unless_db_down(_effects(engine, name), [])
                }

            try:
                # Generous (S4's six Kafka restarts leave a backlog of a minute or
                # more), yet inside the short matrix's test timeout: a stall fails here
                # with the processes' logs, not as a bare timeout.
                await eventually(
                    drained, within=60 + 40 * faults, what=f"{scenario}: outbox drained"
                )
                await eventually(
                    lambda: _unless_db_down(_resolved(writer), False), within=60, what="resolved"
                )
                wanted = {s.message_id for s in writer.sent}
                await eventually(applied, within=120, what=f"{scenario}: every event applied")
            except AssertionError as err:
                raise AssertionError(f"{err}\n{_log_tails(r)}") from None
        finally:
            writer.stop()
            sampling.cancel()
            observing.cancel()
            await asyncio.gather(writing, sampling, observing, return_exceptions=True)
            for w in r.workers:
                w.stop()
    ended = time.time()
    # In append order: copies written to other partitions (S3) come after their
    # originals in time, not in the order partitions are read.
    records = sorted(
        await read_topic(settings.kafka_bootstrap, topic),
        key=lambda rec: (rec.timestamp_ms, rec.partition, rec.offset),
    )
    applied_rows = await _effects(engine, name)
    dead = await _dead_letters(settings, topic)
    async with engine.connect() as conn:
        left = await conn.execute(
            text("SELECT id::text FROM outbox WHERE aggregatetype = :a"), {"a": name}
        )
        left_ids = set(left.scalars())
    history = History(
        consumers=(name,),
        sent=writer.sent,
        published=[
            Seen(rec.headers["id"]) for rec in records if rec.headers.get("id") not in r.poison
        ],
        effects=[Seen(m, name) for m, _, _ in applied_rows],
        left_in_outbox=left_ids,
        dead_letters=dead,
        poison=r.poison,
        complete_log=True,
    )
    report = check(history)
    appended = [
        (rec.key, rec.timestamp_ms / 1000)
        for rec in records
        if rec.headers.get("id") not in r.poison
    ]
    applied_at = [(key, t) for _, key, t in applied_rows]
    # Each fault's window runs to the next fault (the last one's to the end of the run).
    ends = [f["at"] for f in fault_figures[1:]] + [ended] if fault_figures else []
    per_fault = [
        {
            **{k: v for k, v in f.items() if k != "at"},
            "longest key pause, published (s)": round(longest_key_pause(appended, f["at"], end), 1),
            "longest key pause, applied (s)": round(longest_key_pause(applied_at, f["at"], end), 1),
        }
        for f, end in zip(fault_figures, ends, strict=True)
    ]
    # Deliveries are not recorded here (the inbox answers a redelivery before the
    # handler runs), so their duplicates are not a figure of these runs.
    checked = {k: v for k, v in report.figures().items() if k != "duplicate deliveries"}
    figures: dict[str, Any] = {
        "messages": len(writer.sent),
        "failed commits": writer.failed_commits,
        **checked,
        "max backlog": r.max_backlog,
        "seconds": round(ended - started, 1),
        "faults": per_fault,
    }
    return Result(scenario, report, figures)


async def _sample_backlog(r: Run) -> None:
    while True:
        r.max_backlog = max(r.max_backlog, await _unless_db_down(pending(r.engine, r.name), 0))
        await asyncio.sleep(0.5)  # a sampling period, not a synchronisation


async def _unless_db_down(probe: Awaitable[T], fallback: T) -> T:
    """``probe``'s result, or ``fallback`` while the database is down (S7's fault)."""
    try:
        return await probe
    except Exception as err:
        if not database_unavailable(err):
            raise
        log.info("database unavailable: %r", err)
        return fallback


async def _resolved(writer: KeyedWriter) -> bool:
    await writer.resolve()
    return True


async def _dead_letters(settings: Settings, topic: str) -> list[str]:
    dlq = f"{topic}.dlq"
    if dlq not in await list_topics(settings.kafka_bootstrap):
        return []
    return [rec.headers.get("id", "") for rec in await read_topic(settings.kafka_bootstrap, dlq)]


# -- faults --------------------------------------------------------------------------


async def kill_relay(r: Run, i: int) -> dict[str, Any]:
    """SIGKILL one relay (alternating) and start it again at once: its leases expire
    and the survivor or the restarted one takes the partitions; unsettled batches
    are republished (consumers dedupe)."""
    victim = r.relays[i % len(r.relays)]
    victim.signal(signal.SIGKILL)
    victim.start()
    return {"fault": f"SIGKILL {victim.name}"}


async def kill_worker(r: Run, i: int) -> dict[str, Any]:
    """SIGKILL one worker (alternating) and start it again: uncommitted offsets are
    redelivered, the inbox makes their effects apply once."""
    victim = r.workers[i % len(r.workers)]
    victim.signal(signal.SIGKILL)
    victim.start()
    return {"fault": f"SIGKILL {victim.name}"}


def _log_tails(r: Run, lines: int = 30) -> str:
    """The last ``lines`` of each relay's and worker's log: why a run stalled."""
    tails = []
    for proc in [*r.relays, *r.workers]:
        text = proc.log.read_text(errors="replace") if proc.log.exists() else ""
        tails.append(f"--- {proc.name}\n" + "\n".join(text.splitlines()[-lines:]))
    return "\n".join(tails)


async def restart_kafka(r: Run, i: int) -> dict[str, Any]:
    """Stop the (single-node) Kafka broker, keep it down for ``KAFKA_DOWN_S`` while
    writes go on, start it again: the relay backs off and drains the backlog, the
    workers reconnect and resume from their committed offsets."""
    kafka = KafkaCluster.single(StackSettings())
    began = time.monotonic()
    async with stopped(kafka.stop, kafka.start):
        await asyncio.sleep(KAFKA_DOWN_S)  # the outage is the fault
    return {"fault": f"Kafka stop, {KAFKA_DOWN_S:g} s, start ({time.monotonic() - began:.1f} s)"}


async def churn_workers(r: Run, i: int) -> dict[str, Any]:
    """A third worker joins the group (even faults) or leaves it with SIGTERM (odd):
    partitions move between members; nothing is lost or applied twice."""
    if i % 2 == 0:
        joiner = r.worker(len(r.workers))
        joiner.start()
        r.workers.append(joiner)
        return {"fault": f"{joiner.name} joins"}
    leaver = r.workers.pop()
    leaver.stop()
    return {"fault": f"{leaver.name} leaves"}


# Hostile records every worker must dead-letter whatever its handler's options (the
# trust-boundary tests' cases that do not depend on a body cap or require_object).
POISON = (
    "truncated",
    "not-utf8",
    "nul",
    "surrogate",
    "huge-int",
    "huge-float",
    "bad-header",
    "duplicate-header",
    "many-headers",
    "large-headers",
    "unknown-type",
    "markup-type",
    "gzip-bad",
    "dbz-packed-garbage",
)


async def inject_poison(r: Run, i: int) -> dict[str, Any]:
    """Hostile records written with kcat (not relaybus) into the topic the workers
    read, ``poison_per_fault`` of them (1 % of the run's traffic in all): each must
    land in the dead-letter queue, nothing else may, and the workers go on."""
    cases = {h.name: h for h in hostile_records() if h.name in POISON}
    names = [POISON[(i * r.poison_per_fault + n) % len(POISON)] for n in range(r.poison_per_fault)]
    for name in names:
        record = cases[name]
        message_id = dict(record.headers).get(b"id", b"").decode()
        r.poison.add(message_id)
        await asyncio.to_thread(
            kcat_produce,
            r.settings.kafka_bootstrap,
            r.topic,
            b"poison",
            [record.body],
            record.headers,
            compression=record.compression,
        )
    return {"fault": f"{len(names)} hostile records ({', '.join(sorted(set(names)))})"}


async def duplicate_ids(r: Run, i: int) -> dict[str, Any]:
    """Five messages already applied are written again, three times each, at once, by
    three kcat processes (not relaybus) to three partitions, so the copies reach
    different workers concurrently: the inbox must apply each id once. (Applied ones
    only: a copy of a message not yet published would overtake its key's earlier
    messages, a reordering by the foreign writer, not by relaybus.)"""
    applied = await _effects(r.engine, r.name)
    chosen = [(m, key) for m, key, _ in applied[-1 - 37 * i :: -97][:5]]
    for message_id, key in chosen:
        headers = [(b"id", message_id.encode()), (b"type", TEST_TYPE.encode())]
        await asyncio.gather(
            *(
                asyncio.to_thread(
                    kcat_produce,
                    r.settings.kafka_bootstrap,
                    r.topic,
                    key.encode(),
                    [b'{"n": -1}'],
                    headers,
                    partition=p,
                )
                for p in range(3)
            )
        )
    return {"fault": f"{len(chosen)} ids written 3x concurrently"}


async def crash_postgres(r: Run, i: int) -> dict[str, Any]:
    """Even faults: PostgreSQL stopped in immediate mode (every process quits at once,
    as in a crash; the start runs crash recovery) under the writer's, the relays' and
    the workers' transactions, then started again. Odd faults: every PostgreSQL
    process frozen (SIGSTOP) for ``POSTGRES_PAUSE_S``, mid-transaction, then thawed.
    No event without its committed row, no committed row without its event:
    indeterminate commits are resolved against the database afterwards."""
    postgres = Postgres(StackSettings())
    began = time.monotonic()
    if i % 2 == 1:
        postmaster = postgres.pid()
        assert postmaster is not None, "PostgreSQL is not running"
        async with paused(*with_children(postmaster)):
            await asyncio.sleep(POSTGRES_PAUSE_S)  # the freeze is the fault
        return {"fault": f"PostgreSQL frozen ({time.monotonic() - began:.1f} s)"}
    async with stopped(lambda: postgres.stop("immediate"), postgres.start):
        pass  # a crash: stopped at once, crash recovery on the start
    await r.engine.dispose()  # the run's own pooled connections died with it
    return {"fault": f"PostgreSQL crash and restart ({time.monotonic() - began:.1f} s)"}


async def network_fault(r: Run, i: int) -> dict[str, Any]:
    """Through Toxiproxy, in turn: relay<->Kafka cut, worker<->PostgreSQL cut, relay<->
    Kafka +1 s latency, worker<->PostgreSQL data dropped then closed, relay<->Kafka
    connections reset, relay<->Kafka at 32 KB/s; each for 3-5 s, then healed."""
    fault = SCHEDULE[i % len(SCHEDULE)]
    held = await fault.inject(ToxiproxyAPI())
    return {"fault": f"{fault.describe()} ({held:.1f} s)"}


# Scenarios whose relays reach Kafka, and workers PostgreSQL, through Toxiproxy.
PROXIED = {"S6"}

# The matrix's scenarios that ``run`` drives (S5 has its own run: leader_fault.py).
FAULTS: dict[str, Fault] = {
    "S1": kill_relay,
    "S2": kill_worker,
    "S3": duplicate_ids,
    "S4": restart_kafka,
    "S6": network_fault,
    "S7": crash_postgres,
    "S8": inject_poison,
    "S10": churn_workers,
}
