"""Fault injection without Docker: signals to the stack's processes, bounded in time,
and where a Kafka cluster's partitions are led (asked of one chosen node)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator, Callable

from aiokafka import TopicPartition
from aiokafka.cluster import ClusterMetadata
from aiokafka.conn import create_conn
from aiokafka.protocol.metadata import MetadataRequest

from relaybus.stack.kafka_broker import KafkaCluster, KafkaNode
from relaybus.stack.procs import pid_alive


@contextlib.asynccontextmanager
async def paused(*pids: int) -> AsyncIterator[None]:
    """SIGSTOP ``pids`` for the block; SIGCONT on the way out, whatever happens (a
    frozen broker or database left behind would break every later test)."""
    stopped = []
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        yield
    finally:
        for pid in stopped:
            if pid_alive(pid):
                os.kill(pid, signal.SIGCONT)


@contextlib.asynccontextmanager
async def stopped(stop: Callable[[], object], start: Callable[[], object]) -> AsyncIterator[None]:
    """A service stopped for the block and started again on the way out, whatever
    happens (a service left down would break every later test)."""
    await asyncio.to_thread(stop)
    try:
        yield
    finally:
        await asyncio.to_thread(start)


def with_children(pid: int) -> list[int]:
    """``pid`` and its direct children (a PostgreSQL postmaster and its backends),
    read from /proc; children first, so none runs on while its parent is stopped."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                # "pid (comm) state ppid ...": comm may hold spaces; split after it.
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # exited while we looked
        if ppid == pid:
            children.append(int(entry))
    return [*children, pid]


async def leaders(node: KafkaNode, topic: str, timeout: float = 2.0) -> dict[int, int]:
    """partition -> leader node id of ``topic``, as ``node`` sees it (-1: none)."""
    conn = await asyncio.wait_for(create_conn(node.host, node.broker_port), timeout)
    try:
        response = await asyncio.wait_for(conn.send(MetadataRequest([topic])), timeout)
    finally:
        conn.close()
    cluster = ClusterMetadata()
    cluster.update_metadata(response)
    out: dict[int, int] = {}
    for p in cluster.partitions_for_topic(topic) or set():
        leader = cluster.leader_for_partition(TopicPartition(topic, p))
        out[p] = leader if isinstance(leader, int) else -1
    return out


def node(cluster: KafkaCluster, node_id: int) -> KafkaNode:
    return next(n for n in cluster.nodes if n.node_id == node_id)


def active_controller(cluster: KafkaCluster, exclude: int | None = None) -> tuple[int, int]:
    """(node id, epoch) of the KRaft quorum's leader, the active controller, from the
    newest ``quorum-state`` file the nodes (but ``exclude``) wrote; (-1, epoch) while
    an election is on."""
    best = (-1, -1)
    for n in cluster.nodes:
        if n.node_id == exclude:
            continue
        state_file = n.home / "data" / "__cluster_metadata-0" / "quorum-state"
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            continue  # being rewritten: the other nodes answer
        epoch = int(state.get("leaderEpoch", -1))
        if epoch > best[1]:
            best = (int(state.get("leaderId", -1)), epoch)
    return best
