"""The 3-node KRaft cluster: RF 3, min ISR 2, acks=all writes survive a broker's death."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from functools import partial

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from relaybus.stack.kafka_broker import KafkaCluster
from relaybus.stack.procs import pid_alive
from relaybus.stack.settings import StackSettings
from tests.support.poll import eventually

pytestmark = pytest.mark.kafka3  # needs `relaybus stack up --kafka-nodes 3`


@pytest.fixture
async def cluster() -> AsyncIterator[KafkaCluster]:
    cluster = KafkaCluster.three_nodes(StackSettings())
    assert all(n.pid() for n in cluster.nodes), "run `relaybus stack up --kafka-nodes 3` first"
    yield cluster
    # Bring back whatever the test killed, so the cluster is whole for the next run.
    await asyncio.to_thread(cluster.start)


async def _dead(pid: int) -> bool:
    return not pid_alive(pid)


async def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, request_timeout_ms=30000
    )
    await producer.start()
    try:
        for v in values:
            await producer.send_and_wait(topic, v, key=v)
    finally:
        await producer.stop()


async def test_rf3_topic_accepts_acks_all_after_one_broker_is_killed(
    cluster: KafkaCluster,
) -> None:
    bootstrap = cluster.bootstrap
    topic = f"ha.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 3, 3)])
        described = await admin.describe_topics([topic])
        deadline = time.monotonic() + 30
        while not described[0]["partitions"]:
            assert time.monotonic() < deadline, f"{topic} has no partitions after 30 s"
            await asyncio.sleep(0.05)
            described = await admin.describe_topics([topic])
        partitions = described[0]["partitions"]
        assert all(len(p["replicas"]) == 3 for p in partitions)
        leader = partitions[0]["leader"]
    finally:
        await admin.close()

    await _produce(bootstrap, topic, [f"before-{i}".encode() for i in range(50)])

    victim = next(n for n in cluster.nodes if n.node_id == leader)
    pid = victim.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    await eventually(partial(_dead, pid), within=10, what=f"broker {leader} dead")

    # Two of three replicas remain = min ISR 2: acks=all writes must still succeed.
    await _produce(bootstrap, topic, [f"after-{i}".encode() for i in range(50)])

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        seen: set[bytes] = set()
        while len(seen) < 100:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                seen |= {r.value for r in records if r.value is not None}
    finally:
        await consumer.stop()
    assert seen == {f"{w}-{i}".encode() for w in ("before", "after") for i in range(50)}
