"""Operator actions on the outbox (status, list, show, retry, skip, purge), each audited."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from relaybus.audit import record
from relaybus.outbox.store import PURGE_ARCHIVE, PostgresOutboxStore

# Constant time whatever the archive holds: the not-published outcomes are few and
# counted exactly through the partial index ix_outbox_archive_unpublished; the
# published rows are the table's live tuples (PostgreSQL's statistics, kept
# current by every committing transaction within about a second) minus those.
# Until autovacuum has analyzed a freshly filled archive, the planner assumes most
# rows match ``outcome <> 'published'`` and would read the whole table: sequential
# scans are switched off for this one transaction so the index is always used.
_INDEX_ONLY = text("SET LOCAL enable_seqscan = off")
ARCHIVE_UNPUBLISHED = text(
    "SELECT outcome, count(*) AS n FROM outbox_archive WHERE outcome <> 'published' "
    "GROUP BY outcome"
)
# The archive is partitioned by day (migration 0010): its live rows are its partitions'.
_ARCHIVE_LIVE_ROWS = text(
    "SELECT sum(s.n_live_tup) FROM pg_partition_tree('outbox_archive') t "
    "JOIN pg_stat_user_tables s ON s.relid = t.relid WHERE t.isleaf"
)
_COLUMNS = (
    "id, aggregatetype, aggregateid, type, timestamp, partition, sequence, status, "
    "attempts, last_error, next_attempt_at"
)


@dataclass(frozen=True)
class OutboxStatus:
    """The outbox at a glance. ``pending``, ``failed`` and the not-published
    outcomes in ``archived`` are exact; ``archived["published"]`` is an estimate
    (named in ``archived_estimated``) so that this read costs the same at 0 or 10 M
    archived rows."""

    pending: int
    failed: int
    oldest_pending_age_s: float
    archived: dict[str, int]
    archived_estimated: tuple[str, ...] = ("published",)


@dataclass(frozen=True)
class SlotStatus:
    """A logical replication slot of this database (the WAL relay's, Debezium's, …).

    ``lag_bytes``: WAL written since the slot's confirmed position (what its consumer
    has yet to handle); ``retained_bytes``: WAL the server keeps for it;
    ``lag_seconds``: the walsender's flush lag while a consumer streams, else the time
    since the WAL relay last confirmed (None if unknown); ``idle_seconds``: how long
    it has had no consumer (None while streamed, or unknown for slots the WAL relay
    never confirmed); ``stale``: no consumer for longer than the setting (or for an
    unknown time), while it keeps WAL.
    """

    slot_name: str
    plugin: str
    active: bool
    wal_status: str
    lag_bytes: int
    retained_bytes: int
    lag_seconds: float | None
    idle_seconds: float | None
    stale: bool


_SLOTS = text(
    """
    SELECT s.slot_name, s.plugin, s.active, coalesce(s.wal_status, '') AS wal_status,
           coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn), 0) AS lag,
           coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn), 0) AS retained,
           EXTRACT(EPOCH FROM r.flush_lag) AS flush_lag,
           EXTRACT(EPOCH FROM (now() - w.confirmed_at)) AS since_confirmed
      FROM pg_replication_slots s
      LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid
      LEFT JOIN outbox_wal_slots w ON w.slot_name = s.slot_name
     WHERE s.slot_type = 'logical' AND s.database = current_database()
     ORDER BY s.slot_name
    """
)


@dataclass(frozen=True)
class StallStatus:
    """A destination a relay reports stalled (``outbox_stalls``): which relay,
    broker and destination (``orders[3]``: topic and partition), the broker node
    it waits on, for how long (``seconds``), how many sends are unanswered, and how
    long ago the relay last reported it (``reported_s_ago``: a relay refreshes it
    every coordination tick; a row much older belongs to a relay that is gone)."""

    instance: str
    broker: str
    destination: str
    leader: str
    seconds: float
    waiting: int
    reported_s_ago: float


_STALLS = text(
    """
    SELECT instance, broker, destination, leader, waiting,
           EXTRACT(EPOCH FROM (now() - since)) AS seconds,
           EXTRACT(EPOCH FROM (now() - seen_at)) AS reported
      FROM outbox_stalls
     ORDER BY since, destination
    """
)


@dataclass(frozen=True)
class PartitionBacklog:
    """One outbox partition's waiting rows: pending, failed, and the age of its
    oldest pending row (seconds; 0 with none pending)."""

    partition: int
    pending: int
    failed: int
    oldest_pending_age_s: float


_BACKLOG_BY_PARTITION = text(
    """
    SELECT partition,
           count(*) FILTER (WHERE status = 'pending') AS pending,
           count(*) FILTER (WHERE status = 'failed') AS failed,
           EXTRACT(EPOCH FROM (now() AT TIME ZONE 'utc')
                   - min(timestamp) FILTER (WHERE status = 'pending')) AS oldest_age
      FROM outbox
     GROUP BY partition
     ORDER BY partition
    """
)


class OutboxAdmin:
    """Reads and operator changes; every change writes an ``audit_log`` row in the same
    transaction, so an action and its audit record commit together."""

    def __init__(self, engine: AsyncEngine, actor: str | None = None) -> None:
        self._engine = engine
        self._actor = actor  # who the audit rows name (default: the OS user)
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def status(self) -> OutboxStatus:
        # The same backlog figures the relay exports as metrics.
        backlog = await PostgresOutboxStore(self._engine).backlog()
        async with self._engine.connect() as conn:
            await conn.execute(_INDEX_ONLY)
            archived = {r.outcome: int(r.n) for r in await conn.execute(ARCHIVE_UNPUBLISHED)}
            live = int((await conn.execute(_ARCHIVE_LIVE_ROWS)).scalar() or 0)
        # Statistics lag commits by up to a second: never report a negative estimate.
        archived["published"] = max(0, live - sum(archived.values()))
        return OutboxStatus(
            pending=backlog.pending,
            failed=backlog.failed,
            oldest_pending_age_s=backlog.oldest_pending_age,
            archived=archived,
        )

    async def slots(self, stale_after: float) -> list[SlotStatus]:
        """The database's logical replication slots with their lag (``SlotStatus``)."""
        async with self._engine.connect() as conn:
            rows = (await conn.execute(_SLOTS)).all()
        out = []
        for r in rows:
            since = None if r.since_confirmed is None else float(r.since_confirmed)
            idle = None if r.active else since
            # While streamed, the walsender's flush lag (None when caught up: 0).
            flush_lag = float(r.flush_lag) if r.flush_lag is not None else 0.0
            lag_s = flush_lag if r.active else since
            stale = not r.active and (idle is None or idle > stale_after)
            out.append(
                SlotStatus(
                    slot_name=r.slot_name,
                    plugin=r.plugin,
                    active=bool(r.active),
                    wal_status=r.wal_status,
                    lag_bytes=int(r.lag),
                    retained_bytes=int(r.retained),
                    lag_seconds=lag_s,
                    idle_seconds=idle,
                    stale=stale,
                )
            )
        return out

    async def stalls(self) -> list[StallStatus]:
        """What the relays report stalled now, oldest first (``StallStatus``)."""
        async with self._engine.connect() as conn:
            rows = (await conn.execute(_STALLS)).all()
        return [
            StallStatus(
                instance=r.instance,
                broker=r.broker,
                destination=r.destination,
                leader=r.leader,
                seconds=max(0.0, float(r.seconds)),
                waiting=int(r.waiting),
                reported_s_ago=max(0.0, float(r.reported)),
            )
            for r in rows
        ]

    async def backlog_by_partition(self) -> list[PartitionBacklog]:
        """The partitions that hold rows, with their pending and failed counts."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(_BACKLOG_BY_PARTITION)
            return [
                PartitionBacklog(
                    int(r.partition), int(r.pending), int(r.failed), float(r.oldest_age or 0.0)
                )
                for r in rows
            ]

    async def rows(self, status: str | None, limit: int) -> list[dict[str, Any]]:
        where = "WHERE status = :status" if status else ""
        sql = text(f"SELECT {_COLUMNS} FROM outbox {where} ORDER BY sequence LIMIT :limit")
        async with self._engine.connect() as conn:
            result = await conn.execute(sql, {"status": status, "limit": limit})
            return [dict(r._mapping) for r in result]

    async def show(self, message_id: uuid.UUID) -> dict[str, Any] | None:
        """The row (hot table first, then archive) with payload and headers. An id
        archived more than once (enqueued again after it was archived) shows its latest
        archived row."""
        async with self._engine.connect() as conn:
            for table, latest in (("outbox", ""), ("outbox_archive", " ORDER BY archived_at DESC")):
                row = (
                    await conn.execute(
                        text(
                            f"SELECT *, '{table}' AS in_table FROM {table} WHERE id = :id{latest}"
                        ),
                        {"id": message_id},
                    )
                ).first()
                if row is not None:
                    return dict(row._mapping)
        return None

    async def retry(self, ids: list[uuid.UUID] | None) -> int:
        """Put failed rows (``ids``, or all failed when None) back to pending.

        The row is deleted and inserted again (same id, partition and sequence) in one
        statement rather than updated: the WAL relay and Debezium read only inserts,
        so this is what makes them publish it again; for the polling relay it is the
        same as an update.
        """
        where = "status = 'failed'" + (" AND id = ANY(:ids)" if ids is not None else "")
        sql = text(
            f"""
            WITH moved AS (DELETE FROM outbox WHERE {where} RETURNING *)
            INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload, timestamp,
                                headers, partition, sequence, status, attempts)
            SELECT id, aggregatetype, aggregateid, type, payload, timestamp, headers,
                   partition, sequence, 'pending', attempts FROM moved
            """
        )
        return await self._act("outbox.retry", sql, {"ids": ids}, ids)

    async def skip(self, ids: list[uuid.UUID]) -> int:
        """Move failed rows to the archive with outcome ``skipped`` (never published)."""
        sql = text(
            """
            WITH moved AS (DELETE FROM outbox WHERE id = ANY(:ids) AND status = 'failed'
                           RETURNING *)
            INSERT INTO outbox_archive (id, aggregatetype, aggregateid, type, payload,
                                        timestamp, headers, partition, sequence, attempts,
                                        outcome)
            SELECT id, aggregatetype, aggregateid, type, payload, timestamp, headers,
                   partition, sequence, attempts, 'skipped' FROM moved
            """
        )
        return await self._act("outbox.skip", sql, {"ids": ids}, ids)

    async def purge(self, older_than_days: float) -> int:
        """Delete archived rows older than ``older_than_days`` (the day partitions
        wholly older are dropped, the rest deleted); the rows removed."""
        async with self._sessions() as session, session.begin():
            result = await session.execute(PURGE_ARCHIVE, {"days": older_than_days})
            count = int(result.scalar() or 0)
            await record(
                session,
                "outbox.purge",
                "*",
                {"rows": count, "older_than_days": older_than_days},
                actor=self._actor,
            )
        return count

    async def _act(
        self,
        action: str,
        sql: Any,
        params: dict[str, Any],
        ids: list[uuid.UUID] | None,
    ) -> int:
        async with self._sessions() as session, session.begin():
            count = await _execute(session, sql, params)
            target = ",".join(str(i) for i in ids) if ids else "*"
            await record(session, action, target, {"rows": count}, actor=self._actor)
        return count


async def _execute(session: AsyncSession, sql: Any, params: dict[str, Any]) -> int:
    result = await session.execute(sql, params)
    return int(result.rowcount)  # type: ignore[attr-defined]
