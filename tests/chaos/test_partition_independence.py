"""S5 (one fault, in CI): a Kafka partition leader frozen (SIGSTOP) under a steady
write load on the 3-node KRaft cluster, through one real relay (tests/chaos/leader_fault.py).

What must hold: nothing lost, per-key order, the outbox empty after the drain; the
partitions the frozen node does not lead keep publishing once the cluster has fenced
it; the frozen node's partitions resume on their new leaders *before* it is thawed
(the relay follows the election instead of waiting out request timeouts); while it
lasts, the stall is reported to operators (``outbox_stalls``, read by ``outbox
status`` and the console) naming the partition and the node.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.stack.kafka_broker import KafkaCluster
from relaybus.stack.settings import StackSettings
from tests.chaos.leader_fault import leader_fault, rate

pytestmark = pytest.mark.kafka3  # needs `relaybus stack up --kafka-nodes 3`


@pytest.fixture
def cluster() -> KafkaCluster:
    cluster = KafkaCluster.three_nodes(StackSettings())
    assert all(n.pid() for n in cluster.nodes), "run `relaybus stack up --kafka-nodes 3` first"
    return cluster


async def test_a_frozen_leader_holds_back_only_its_partitions_and_they_resume_on_election(
    cluster: KafkaCluster, engine: AsyncEngine, tmp_path: Path
) -> None:
    run = await leader_fault(cluster, engine, tmp_path)
    print("S5 leader freeze:", json.dumps(run.figures))
    assert run.report.ok, run.report
    for p in run.unaffected:
        assert rate(run.records, {p}, run.election_at, run.back_at) > 0, (
            f"partition {p} idle after the election"
        )
    for p, first in run.resumed_at.items():
        assert first < run.back_at, (
            f"partition {p} resumed only when its old leader was thawed\n{run.relay_log[-3000:]}"
        )
    topic_prefix = run.stalls[0].destination.rsplit("[", 1)[0]
    assert any(
        s.destination in {f"{topic_prefix}[{p}]" for p in run.affected}
        and f"node {run.victim}" in s.leader
        for s in run.stalls
    ), run.stalls


async def test_the_active_controller_killed_hands_over_and_loses_nothing(
    cluster: KafkaCluster, engine: AsyncEngine, tmp_path: Path
) -> None:
    """S5's kill, in CI: SIGKILL of the active KRaft controller (also a broker leading
    some partitions): the quorum elects another controller, its partitions get new
    leaders and resume before it is restarted, and the history holds."""
    run = await leader_fault(cluster, engine, tmp_path, kill=True, controller=True)
    print("S5 controller kill:", json.dumps(run.figures))
    assert run.report.ok, run.report
    assert "new controller after fault (s)" in run.figures
    for p, first in run.resumed_at.items():
        assert first < run.back_at, (
            f"partition {p} resumed only when the old controller came back\n{run.relay_log[-3000:]}"
        )
