"""S5 (one fault): a Kafka partition leader frozen (SIGSTOP) under a steady write load,
on the 3-node KRaft cluster (RF 3, min ISR 2), through one real relay.

What must hold: nothing lost, per-key order, the outbox empty after the drain; the
partitions the frozen node does not lead keep publishing once the cluster has fenced
it; the frozen node's partitions resume on their new leaders *before* it is thawed
(the relay follows the election instead of waiting out request timeouts); while it
lasts, the stall is reported to operators (``outbox_stalls``, read by ``outbox
status`` and the console) naming the partition and the node.

Figures printed (the fault matrix's S5 row): unaffected partitions' append rate
before, between the freeze and the election (acks=all waits for the frozen follower
until the controller fences it: the cluster's ~9 s session timeout), and after the
election, as a ratio of before; seconds from the election to the first append on
each affected partition.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.admin import OutboxAdmin, StallStatus
from relaybus.brokers.kafka_admin import ensure_topic
from relaybus.ids import uuid7
from stack.kafka_broker import KafkaCluster
from stack.settings import StackSettings
from tests.chaos.faults import leaders, node, paused
from tests.chaos.history import History, Seen, check
from tests.chaos.workload import KeyedWriter
from tests.support.outboxdata import Record, read_topic, wait_drained
from tests.support.poll import eventually
from tests.support.relayproc import relay_fleet

PARTITIONS = 6
BEFORE_S = 8.0  # steady state before the fault
AFTER_ELECTION_S = 8.0  # the old leader stays frozen this long after the election


@pytest.fixture
def cluster() -> KafkaCluster:
    cluster = KafkaCluster.three_nodes(StackSettings())
    assert all(n.pid() for n in cluster.nodes), "run `relaybus stack up --kafka-nodes 3` first"
    return cluster


def _rate(records: list[Record], parts: set[int], start: float, end: float) -> float:
    n = sum(1 for r in records if r.partition in parts and start <= r.timestamp_ms / 1000 < end)
    return n / max(end - start, 1e-9)


async def test_a_frozen_leader_holds_back_only_its_partitions_and_they_resume_on_election(
    cluster: KafkaCluster, engine: AsyncEngine, tmp_path: Path
) -> None:
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
        return all(v >= 0 for v in (await leaders(observer, topic)).values())

    await eventually(assigned, within=30, what="leaders for every partition")
    before = await leaders(observer, topic)
    victim_id = before[0]
    affected = {p for p, leader in before.items() if leader == victim_id}
    unaffected = set(before) - affected
    survivor = next(n for n in cluster.nodes if n.node_id != victim_id)
    victim = node(cluster, victim_id)
    victim_pid = victim.pid()
    assert victim_pid is not None

    writer = KeyedWriter(engine, agg, keys=24, per_txn=10, interval=0.1)
    admin = OutboxAdmin(engine)
    seen_stalls: list[StallStatus] = []
    with relay_fleet(
        tmp_path,
        [{"pattern": "*", "brokers": ["kafka"]}],
        RELAYBUS_KAFKA_BOOTSTRAP=cluster.bootstrap,
    ) as fleet:
        fleet.start("r1")
        writing = asyncio.create_task(writer.run())
        try:
            await asyncio.sleep(BEFORE_S)  # the scenario's steady phase, by definition
            fault_at = time.time()
            async with paused(victim_pid):

                async def elected() -> bool:
                    now = await leaders(survivor, topic)
                    return all(now.get(p, -1) not in (-1, victim_id) for p in affected)

                async def stall_reported() -> bool:
                    mine = [s for s in await admin.stalls() if s.destination.startswith(topic)]
                    seen_stalls.extend(mine)
                    return bool(mine)

                await eventually(stall_reported, within=30, what="the stall reported")
                await eventually(elected, within=60, what="new leaders elected")
                election_at = time.time()
                await asyncio.sleep(AFTER_ELECTION_S)  # frozen this long after the election
                thaw_at = time.time()
            await asyncio.sleep(3.0)  # writes go on after the thaw
        finally:
            writer.stop()
            await writing
        await wait_drained(engine, agg, within=120)

        async def stalls_cleared() -> bool:
            return not [s for s in await admin.stalls() if s.destination.startswith(topic)]

        await eventually(stalls_cleared, within=30, what="the stall cleared")
        log = fleet.logs()

    records = await read_topic(cluster.bootstrap, topic)
    history = History(
        consumers=(),
        sent=writer.sent,
        published=[Seen(r.headers["id"]) for r in records],
        complete_log=True,
    )
    report = check(history)
    pre = _rate(records, unaffected, fault_at - BEFORE_S / 2, fault_at)
    fenced = _rate(records, unaffected, fault_at, election_at)
    after = _rate(records, unaffected, election_at, thaw_at)
    resumed = {
        p: min(
            (
                r.timestamp_ms / 1000
                for r in records
                if r.partition == p and r.timestamp_ms / 1000 > election_at
            ),
            default=float("inf"),
        )
        - election_at
        for p in sorted(affected)
    }
    figures = {
        **report.figures(),
        "victim node": victim_id,
        "affected partitions": sorted(affected),
        "election after freeze (s)": round(election_at - fault_at, 1),
        "unaffected rate before (rec/s)": round(pre, 1),
        "unaffected until election (x before)": round(fenced / pre, 2) if pre else None,
        "unaffected after election (x before)": round(after / pre, 2) if pre else None,
        "affected resumed after election (s)": {p: round(s, 2) for p, s in resumed.items()},
        "stall reported": f"{seen_stalls[0].destination} on {seen_stalls[0].leader}",
    }
    print("S5 leader freeze:", json.dumps(figures))
    assert report.ok, report
    for p in unaffected:
        assert _rate(records, {p}, election_at, thaw_at) > 0, (
            f"partition {p} idle after the election"
        )
    for p, seconds in resumed.items():
        assert election_at + seconds < thaw_at, (
            f"partition {p} resumed only when its old leader was thawed\n{log[-3000:]}"
        )
    assert any(
        s.destination in {f"{topic}[{p}]" for p in affected} and f"node {victim_id}" in s.leader
        for s in seen_stalls
    ), seen_stalls
