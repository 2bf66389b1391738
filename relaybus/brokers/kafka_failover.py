"""Moving a Kafka producer to a partition's new leader as soon as the cluster elects it.

aiokafka (0.14) sends a partition's batch to the leader its metadata names and waits
for the answer up to ``request_timeout_ms``. A leader that froze (SIGSTOP, a long GC
pause, a network black hole) keeps the connection open, so the produce request waits
the full timeout, times out *without* refreshing metadata, and is retried on the same
frozen node: the probe saw publishing resume 15, 30 or 40 s after the freeze, while
the cluster had moved leadership after 9-10 s. A dead leader (connection refused)
recovers by itself, as aiokafka refreshes metadata on connection errors.

``LeaderWatch`` closes that gap from outside the producer: while some partition has
late sends (``LateSends``), it asks a broker *other than* the stalled partitions'
leaders for the cluster's metadata every ``interval`` seconds, installs it in the
producer's client (a fenced broker is no longer listed, so aiokafka's own refreshes
stop trying it), and when a stalled partition's leader changed, closes the client's
connections to the old leader: the waiting produce request fails at once with a
connection error, which aiokafka retries, in order and without duplicates (the
idempotent producer's sequence numbers), on the new leader.

It reaches into aiokafka's client (``_get_conn``, ``_conns``): the version is pinned
in constraints.txt, and tests/chaos/test_partition_independence.py fails if it
stops working.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Hashable
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.protocol.metadata import MetadataRequest

from relaybus.brokers.stalls import LateSends, Stall

log = logging.getLogger(__name__)


class LeaderWatch:
    """Watches the stalled partitions of one producer (see the module's docstring).

    Failures of a round (no other broker answers) are logged and the next round
    tries again; the watch never raises into the publisher.
    """

    def __init__(self, client: Any, late: LateSends, *, interval: float) -> None:
        self._client = client  # aiokafka's AIOKafkaClient (untyped)
        self._late = late
        self._interval = max(0.05, interval)
        # The leader each stalled partition had when first seen stalled.
        self._suspect: dict[TopicPartition, int] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def stalls(self) -> list[Stall]:
        """The stalled partitions, with the leader the producer sends them to."""
        out = []
        for destination, (since, waiting) in self._late.stalled_destinations().items():
            out.append(
                Stall("kafka", _name(destination), self._leader_name(destination), since, waiting)
            )
        return sorted(out, key=lambda s: (s.since, s.destination))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._round()
            except (KafkaError, OSError, TimeoutError) as err:
                log.warning("kafka: checking stalled partitions' leaders failed: %r", err)

    async def _round(self) -> None:
        stalled = [d for d in self._late.stalled_destinations() if isinstance(d, TopicPartition)]
        cluster = self._client.cluster
        for tp in list(self._suspect):
            if tp not in stalled:
                del self._suspect[tp]
        if not stalled:
            return
        for tp in stalled:
            if tp not in self._suspect:
                leader = cluster.leader_for_partition(tp)
                self._suspect[tp] = leader if isinstance(leader, int) else -1
                log.warning(
                    "kafka: %s has not acknowledged for a while (leader node %s)",
                    _name(tp),
                    self._suspect[tp],
                )
        if not await self._refresh(exclude=set(self._suspect.values())):
            return
        moved_from: set[int] = set()
        for tp, old in self._suspect.items():
            new = cluster.leader_for_partition(tp)
            if isinstance(new, int) and new >= 0 and new != old:
                log.warning("kafka: %s: leader moved from node %s to %s", _name(tp), old, new)
                if old >= 0:  # -1: there was none (an election was under way)
                    moved_from.add(old)
                self._suspect[tp] = new
        for node in moved_from:
            self._close_connections(node)

    async def _refresh(self, exclude: set[int]) -> bool:
        """Metadata of every topic from the first broker outside ``exclude`` that
        answers within the interval, installed in the client; False if none did."""
        client = self._client
        nodes = [b.nodeId for b in client.cluster.brokers() if b.nodeId not in exclude]
        for node in nodes:
            try:
                conn = await asyncio.wait_for(client._get_conn(node), self._interval)
                if conn is None:
                    continue
                metadata = await asyncio.wait_for(conn.send(MetadataRequest(None)), self._interval)
            except (KafkaError, OSError, TimeoutError) as err:
                log.info("kafka: metadata from node %s failed: %r", node, err)
                continue
            if metadata.brokers:
                client.cluster.update_metadata(metadata)
                return True
        return False

    def _close_connections(self, node: int) -> None:
        """Fail the requests waiting on ``node`` so the producer retries them elsewhere."""
        for (node_id, _group), conn in list(self._client._conns.items()):
            if node_id == node:
                conn.close(exc=KafkaConnectionError(f"node {node} no longer leads"))

    def _leader_name(self, destination: Hashable) -> str:
        if not isinstance(destination, TopicPartition):
            return "unknown"
        leader = self._client.cluster.leader_for_partition(destination)
        if not isinstance(leader, int) or leader < 0:
            return "none (election in progress)"
        broker = self._client.cluster.broker_metadata(leader)
        where = f" at {broker.host}:{broker.port}" if broker is not None else ""
        return f"node {leader}{where}"


def _name(destination: Hashable) -> str:
    if isinstance(destination, TopicPartition):
        return f"{destination.topic}[{destination.partition}]"
    return "unknown partition"
