"""The inventory router: saga commands → the inventory shard that owns the product."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaybus.brokers.kafka_admin import end_offsets, ensure_topic, group_offsets
from relaybus.brokers.kafka_connection import KafkaTarget
from relaybus.consumers.incoming import Incoming, InvalidMessage
from relaybus.shop.contract import INVENTORY_COMMANDS, CommandType, StepCommand, parse_keyed
from relaybus.shop.streams.sharding.directory import (
    ShardDirectory,
    ShardEpoch,
    shard_group,
    shard_topic,
)
from relaybus.streams.runtime.processor import Emit, Result
from relaybus.streams.sharding.ring import HashRing

log = logging.getLogger("relaybus.router")

# Headers the router adds to each routed command (any that came in are replaced).
ROUTE_HEADERS = ("route_seq", "route_epoch", "route_product", "route_fence")


def route_key(command: StepCommand) -> str:
    """What a command is routed by: its order's first product (sorted), or the order
    itself for a command without lines (a compensation from a saga that lost state:
    any shard can release an order's reservation, which is a row of its own)."""
    products = sorted({line.product for line in command.items})
    return products[0] if products else f"order:{command.order_id}"


class InventoryRouter:
    """Sends each inventory command to the shard that owns its product, by a
    consistent-hash ring over the current shard epoch.

    - **Ownership**: a product's commands all go to one shard (keyed by the product,
      so to one partition of it): the shard's workers are the only ones touching that
      product's stock row. An order with several products goes with its first one
      (the database's conditional updates keep the others correct).
    - **Changing the shard set** (``relaybus shards set``: a new epoch) moves only the
      products the ring moves. Per-product order holds across the change by
      **drain-then-switch**: before routing anything by the new epoch, the router
      waits until every shard of the old and the new set has committed everything
      sent to it (each shard group's committed offsets reach the topic's end). So
      nothing routed by the old ring is still waiting when the first command goes
      to a product's new shard. The wait is bounded by the slowest shard's backlog;
      inventory commands pause meanwhile (they queue in Kafka, nothing is lost).
    - **Sequence**: every routed command gets ``route_seq``, strictly increasing per
      router process and across restarts (nanosecond clock), plus the epoch, the
      product and the router's lease fence; the shard worker logs them
      (``inventory.command_log``), which is how a test checks per-product order.
    - One router routes at a time (its Redlock lease, ``route_fence``); a restarted
      router drains first (the last epoch a router activated may have commands
      waiting).
    """

    name = "inventory-router"
    inputs: tuple[str, ...] = (INVENTORY_COMMANDS,)
    accepted_types: frozenset[str] = frozenset(
        {CommandType.RESERVE.value, CommandType.RELEASE.value}
    )

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        bootstrap: KafkaTarget,
        *,
        partitions: int,
        replication: int = 1,
        fence: int = 0,
        check_interval: float = 1.0,
        probes: int = 4,
        topic_of: Callable[[int], str] = shard_topic,
    ) -> None:
        self.sessions = sessions
        self.bootstrap = bootstrap
        self.partitions = partitions
        self.replication = replication
        self.fence = fence
        self.check_interval = check_interval
        self.probes = probes
        self.topic_of = topic_of
        self.directory = ShardDirectory()
        self.epoch: ShardEpoch | None = None
        self.ring: HashRing | None = None
        self._next_check = 0.0
        self._last_seq = 0

    def pin(self, epoch: ShardEpoch, ring: HashRing) -> None:
        """Route by ``epoch`` and ``ring`` from now on, never reading the directory
        again (a benchmark's or a test's fixed shard set)."""
        self.epoch, self.ring = epoch, ring
        self._next_check = float("inf")

    def output_topics(self) -> list[str]:
        return []  # shard topics are created when an epoch is switched to

    async def process(self, batch: Sequence[Incoming]) -> list[Result]:
        await self._follow_epoch()
        assert self.epoch is not None
        assert self.ring is not None
        results: list[Result] = []
        for message in batch:
            try:
                command = parse_keyed(StepCommand, message.payload, message.key)
            except InvalidMessage as err:
                results.append(err)
                continue
            key = route_key(command)
            shard = int(self.ring.node_for(key))
            headers = [
                (name, value.encode("utf-8", "surrogatepass"))
                for name, value in message.headers.items()
                if name not in ROUTE_HEADERS
            ]
            headers += [
                ("route_seq", str(self._next_seq()).encode()),
                ("route_epoch", str(self.epoch.epoch).encode()),
                ("route_product", key.encode()),
                ("route_fence", str(self.fence).encode()),
            ]
            results.append([Emit(self.topic_of(shard), key.encode(), message.raw, headers)])
        return results

    def _next_seq(self) -> int:
        self._last_seq = max(self._last_seq + 1, time.time_ns())
        return self._last_seq

    async def _follow_epoch(self) -> None:
        """Switch to a newer epoch if one was published (checked every
        ``check_interval``), draining first."""
        now = time.monotonic()
        if self.epoch is not None and now < self._next_check:
            return
        self._next_check = now + self.check_interval
        async with self.sessions() as session:
            latest = await self.directory.latest(session)
            previous = await self.directory.last_activated(session)
        if latest is None:
            raise LookupError("no inventory shard set yet: run `relaybus shards set N ...`")
        if self.epoch is not None and latest.epoch == self.epoch.epoch:
            return
        shards = set(latest.shards)
        shards |= set(previous.shards if previous else ())
        shards |= set(self.epoch.shards if self.epoch else ())
        for shard in sorted(shards):
            await ensure_topic(
                self.bootstrap, shard_topic(shard), self.partitions, self.replication
            )
        await self._drain(sorted(shards))
        async with self.sessions() as session, session.begin():
            await self.directory.activate(session, latest.epoch)
        old = self.epoch
        self.epoch = latest
        self.ring = HashRing(latest.names(), vnodes=latest.vnodes, probes=self.probes)
        log.info(
            "router: routing by epoch %d, shards %s (was %s)",
            latest.epoch,
            list(latest.shards),
            list(old.shards) if old else "-",
        )

    async def _drain(self, shards: list[int]) -> None:
        """Wait until each shard's group has committed up to its topic's end."""
        started = time.monotonic()
        reported = started
        while True:
            behind = {}
            for shard in shards:
                ends = await end_offsets(self.bootstrap, shard_topic(shard))
                done = await group_offsets(self.bootstrap, shard_group(shard), shard_topic(shard))
                lag = sum(end - done.get(p, 0) for p, end in ends.items() if end > 0)
                if lag > 0:
                    behind[shard] = lag
            if not behind:
                return
            if time.monotonic() - reported > 10:
                reported = time.monotonic()
                log.warning(
                    "router: waiting %.0fs for shards to drain before switching: %s",
                    reported - started,
                    behind,
                )
            await asyncio.sleep(0.1)
