"""S5: a Kafka partition leader frozen (SIGSTOP) or killed (SIGKILL) under a steady
write load, on the 3-node KRaft cluster (RF 3, min ISR 2), through one real relay;
shared by tests/chaos/test_partition_independence.py and ``make chaos``.

Figures (the fault matrix's S5 rows): unaffected partitions' append rate before the
fault, between the fault and the election (acks=all waits for the lost follower
until the controller fences it: the cluster's ~9 s session timeout), and after the
election, as a ratio of before; seconds from the election to the first append on
each affected partition; the stall as ``outbox status`` showed it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.brokers.kafka_admin import ensure_topic
from relaybus.ids import uuid7
from relaybus.outbox.admin import OutboxAdmin, StallStatus
from relaybus.stack.kafka_broker import KafkaCluster
from tests.chaos.faults import active_controller, leaders, node, paused
from tests.chaos.history import History, Report, Seen, check
from tests.chaos.workload import KeyedWriter
from tests.support.outboxdata import Record, read_topic, wait_drained
from tests.support.poll import eventually
from tests.support.relayproc import relay_fleet

PARTITIONS = 6
BEFORE_S = 8.0  # steady state before the fault
AFTER_ELECTION_S = 8.0  # the old leader stays down this long after the election


@dataclass(frozen=True)
class LeaderFault:
    """What one run found: the checked history, the figures, the raw moments."""

    report: Report
    figures: dict[str, Any]
    affected: set[int]
    unaffected: set[int]
    records: list[Record]
    election_at: float
    back_at: float
    resumed_at: dict[int, float]  # affected partition -> its first append after the election
    stalls: list[StallStatus]
    victim: int
    relay_log: str


def rate(records: list[Record], parts: set[int], start: float, end: float) -> float:
    """Records appended to ``parts`` per second in [start, end) (LogAppendTime)."""
    n = sum(1 for r in records if r.partition in parts and start <= r.timestamp_ms / 1000 < end)
    return n / max(end - start, 1e-9)


async def leader_fault(
    cluster: KafkaCluster,
    engine: AsyncEngine,
    tmp: Path,
    *,
    kill: bool = False,
    controller: bool = False,
) -> LeaderFault:
    """Write steadily, then freeze (or kill) the leader of partition 0 (``controller``:
    the active KRaft controller, which in this combined-mode cluster also leads some
    partitions) until ``AFTER_ELECTION_S`` after its partitions have new leaders (and
    the quorum a new controller); thaw (or restart) it, write 3 s more, drain, check."""
    agg = f"s5{uuid7().hex[-10:]}"
    topic = f"outbox.event.{agg}"
    await ensure_topic(
        cluster.bootstrap,
        topic,
        partitions=PARTITIONS,
        replication=3,
        config={"message.timestamp.type": "LogAppendTime"},
    )
    observer = cluster.nodes[0]

    async def assigned() -> bool:
        # Every partition known to the observer (a cluster just started may not have
        # the topic's metadata yet: an empty answer is not "all led") and led.
        seen = await leaders(observer, topic)
        return len(seen) == PARTITIONS and all(v >= 0 for v in seen.values())

    await eventually(assigned, within=30, what="leaders for every partition")
    before = await leaders(observer, topic)
    old_controller, old_epoch = active_controller(cluster)
    victim_id = old_controller if controller else before[0]
    affected = {p for p, leader in before.items() if leader == victim_id}
    unaffected = set(before) - affected
    survivor = next(n for n in cluster.nodes if n.node_id != victim_id)
    victim_pid = node(cluster, victim_id).pid()
    assert victim_pid is not None

    writer = KeyedWriter(engine, agg, keys=24, per_txn=10, interval=0.1)
    admin = OutboxAdmin(engine)
    seen_stalls: list[StallStatus] = []

    controller_moved_at: float | None = None

    async def elected() -> bool:
        nonlocal controller_moved_at
        if controller and controller_moved_at is None:
            leader, epoch = active_controller(cluster, exclude=victim_id)
            if leader not in (-1, victim_id) and epoch > old_epoch:
                controller_moved_at = time.time()
            else:
                return False
        now = await leaders(survivor, topic)
        return all(now.get(p, -1) not in (-1, victim_id) for p in affected)

    victim_partitions = {f"{topic}[{p}]" for p in affected}

    async def stall_reported() -> bool:
        """A stall of a victim-led partition is shown. (Others may show first: with
        acks=all the victim is an in-sync follower of every partition, so theirs wait
        on it too until the ISR shrinks.)"""
        mine = [s for s in await admin.stalls() if s.destination.startswith(topic)]
        seen_stalls.extend(mine)
        return any(s.destination in victim_partitions for s in mine)

    with relay_fleet(
        tmp,
        [{"pattern": "*", "brokers": ["kafka"]}],
        RELAYBUS_KAFKA_BOOTSTRAP=cluster.bootstrap,
    ) as fleet:
        fleet.start("r1")
        writing = asyncio.create_task(writer.run())
        try:
            await asyncio.sleep(BEFORE_S)  # the scenario's steady phase, by definition
            fault_at = time.time()
            if kill:
                os.kill(victim_pid, signal.SIGKILL)
                try:
                    if affected:
                        await eventually(stall_reported, within=30, what="the stall reported")
                    await eventually(elected, within=60, what="new leaders elected")
                    election_at = time.time()
                    await asyncio.sleep(AFTER_ELECTION_S)  # down this long after the election
                finally:
                    back_at = time.time()
                    await asyncio.to_thread(cluster.start)
            else:
                async with paused(victim_pid):
                    await eventually(stall_reported, within=30, what="the stall reported")
                    await eventually(elected, within=60, what="new leaders elected")
                    election_at = time.time()
                    await asyncio.sleep(AFTER_ELECTION_S)  # frozen this long after the election
                    back_at = time.time()
            await asyncio.sleep(3.0)  # writes go on after the node is back
        finally:
            writer.stop()
            await writing
        await wait_drained(engine, agg, within=120)

        async def stalls_cleared() -> bool:
            return not [s for s in await admin.stalls() if s.destination.startswith(topic)]

        await eventually(stalls_cleared, within=30, what="the stall cleared")
        log = fleet.logs()

    records = await read_topic(cluster.bootstrap, topic)
    report = check(
        History(
            consumers=(),
            sent=writer.sent,
            published=[Seen(r.headers["id"]) for r in records],
            complete_log=True,
        )
    )
    pre = rate(records, unaffected, fault_at - BEFORE_S / 2, fault_at)
    fenced = rate(records, unaffected, fault_at, election_at)
    after = rate(records, unaffected, election_at, back_at)
    resumed_at = {
        p: min(
            (
                r.timestamp_ms / 1000
                for r in records
                if r.partition == p and r.timestamp_ms / 1000 > election_at
            ),
            default=float("inf"),
        )
        for p in sorted(affected)
    }
    resumed = {p: at - election_at for p, at in resumed_at.items()}
    checked = {k: v for k, v in report.figures().items() if k != "duplicate deliveries"}
    figures = {
        "messages": len(writer.sent),
        **checked,
        "fault": f"{'SIGKILL' if kill else 'SIGSTOP'} "
        f"{'active controller' if controller else 'leader'} node {victim_id}",
        "affected partitions": sorted(affected),
        "election after fault (s)": round(election_at - fault_at, 1),
        "unaffected rate before (rec/s)": round(pre, 1),
        "unaffected until election (x before)": round(fenced / pre, 2) if pre else None,
        "unaffected after election (x before)": round(after / pre, 2) if pre else None,
        "affected resumed after election (s)": {p: round(s, 2) for p, s in resumed.items()},
        "stall shown": next(
            (
                f"{s.destination} on {s.leader}"
                for s in seen_stalls
                if s.destination in victim_partitions
            ),
            "-",
        ),
    }
    if controller_moved_at is not None:
        figures["new controller after fault (s)"] = round(controller_moved_at - fault_at, 1)
    return LeaderFault(
        report,
        figures,
        affected,
        unaffected,
        records,
        election_at,
        back_at,
        resumed_at,
        seen_stalls,
        victim_id,
        log,
    )
