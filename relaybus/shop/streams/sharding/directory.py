"""Where the inventory shards are: epochs of the shard set, in PostgreSQL."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from relaybus.shop.contract import INVENTORY_SHARD_PREFIX


def shard_topic(shard: int) -> str:
    """The command topic of inventory shard ``shard``."""
    return f"{INVENTORY_SHARD_PREFIX}{shard}"


def shard_group(shard: int) -> str:
    """The consumer group of the inventory worker(s) of ``shard``."""
    return f"inventory-shard-{shard}"


@dataclass(frozen=True)
class ShardEpoch:
    """One configuration of the shard set: ``epoch`` grows by one per change."""

    epoch: int
    shards: tuple[int, ...]
    vnodes: int

    def names(self) -> list[str]:
        return [str(shard) for shard in self.shards]


class ShardDirectory:
    """Reads and changes the shard set (``inventory.shard_epochs``); each change is a
    new epoch row, so the history of the routing stays visible."""

    async def latest(self, session: AsyncSession) -> ShardEpoch | None:
        row = (
            await session.execute(
                text(
                    "SELECT epoch, shards, vnodes FROM inventory.shard_epochs "
                    "ORDER BY epoch DESC LIMIT 1"
                )
            )
        ).one_or_none()
        if row is None:
            return None
        return ShardEpoch(int(row.epoch), tuple(sorted(row.shards)), int(row.vnodes))

    async def publish(
        self, session: AsyncSession, shards: list[int], vnodes: int, note: str
    ) -> ShardEpoch:
        """Make ``shards`` the shard set as a new epoch (serialised by a table lock:
        two concurrent changes get consecutive epochs). Raises ``ValueError`` for an
        empty set or a negative shard number."""
        if not shards or min(shards) < 0:
            raise ValueError("a shard set needs at least one shard, numbered from 0")
        await session.execute(text("LOCK TABLE inventory.shard_epochs IN EXCLUSIVE MODE"))
        epoch = int(
            await session.scalar(
                text("SELECT coalesce(max(epoch), 0) + 1 FROM inventory.shard_epochs")
            )
            or 1
        )
        await session.execute(
            text(
                "INSERT INTO inventory.shard_epochs (epoch, shards, vnodes, note) "
                "VALUES (:epoch, :shards, :vnodes, :note)"
            ),
            {"epoch": epoch, "shards": sorted(set(shards)), "vnodes": vnodes, "note": note},
        )
        return ShardEpoch(epoch, tuple(sorted(set(shards))), vnodes)

    async def ensure(
        self, session: AsyncSession, shards: list[int], vnodes: int, note: str
    ) -> ShardEpoch:
        """The latest epoch if it has exactly ``shards`` and ``vnodes``, else a new
        epoch with them (what ``relaybus run`` and the demo start from)."""
        latest = await self.latest(session)
        wanted = tuple(sorted(set(shards)))
        if latest is not None and (latest.shards, latest.vnodes) == (wanted, vnodes):
            return latest
        return await self.publish(session, shards, vnodes, note)

    async def last_activated(self, session: AsyncSession) -> ShardEpoch | None:
        """The newest epoch a router has routed by (commands may wait on its shards)."""
        row = (
            await session.execute(
                text(
                    "SELECT epoch, shards, vnodes FROM inventory.shard_epochs "
                    "WHERE activated_at IS NOT NULL ORDER BY epoch DESC LIMIT 1"
                )
            )
        ).one_or_none()
        if row is None:
            return None
        return ShardEpoch(int(row.epoch), tuple(sorted(row.shards)), int(row.vnodes))

    async def activate(self, session: AsyncSession, epoch: int) -> None:
        """Record that the router now routes by ``epoch``."""
        await session.execute(
            text("UPDATE inventory.shard_epochs SET activated_at = now() WHERE epoch = :e"),
            {"e": epoch},
        )
