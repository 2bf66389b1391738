"""The WAL relay's SQL: its publication, failed rows, clean-up and slot progress."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Sequence

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.outbox.wal_rows import WalBadRow, WalEvent

# Slot and publication names go into DDL and the replication protocol unquoted.
_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

# A row no broker took (or that cannot become a message) is kept as a ``failed`` row
# in the outbox, where the operator tools find it. Re-inserted when the writer already
# deleted it (the writer-deletes mode); this insert reaches the WAL too, and the
# decoder passes over it (status is not pending). ``outbox retry`` re-inserts it as
# pending, which the WAL relay then publishes.
_RECORD_FAILED = """
    INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload, timestamp, headers,
                        partition, sequence, status, attempts, last_error)
    SELECT u.id, u.aggregatetype, u.aggregateid, u.type, u.payload::jsonb, u.ts::timestamp,
           u.headers::jsonb, u.partition::smallint, u.sequence::bigint, 'failed', 1, u.error
      FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                  $7::text[], $8::text[], $9::text[], $10::text[])
           AS u(id, aggregatetype, aggregateid, type, payload, ts, headers, partition,
                sequence, error)
    ON CONFLICT (id) DO UPDATE SET status = 'failed', attempts = outbox.attempts + 1,
                                   last_error = EXCLUDED.last_error, next_attempt_at = NULL
"""
# Every pending row up to a sequence the relay has published. Rows below it that are
# not published yet (committed later, or still in flight) may go too: the WAL keeps
# their inserts, which is what the WAL relay publishes; one that then fails is
# re-inserted as failed (_RECORD_FAILED). Uncommitted rows are not visible to it.
_DELETE_UPTO = "DELETE FROM outbox WHERE status = 'pending' AND sequence <= $1"
_PROGRESS = """
    INSERT INTO outbox_wal_slots (slot_name, confirmed_lsn, confirmed_at, instance)
    VALUES ($1, $2, now(), $3)
    ON CONFLICT (slot_name) DO UPDATE
       SET confirmed_lsn = EXCLUDED.confirmed_lsn, confirmed_at = now(),
           instance = EXCLUDED.instance
"""

log = logging.getLogger(__name__)


def name_problem(kind: str, name: str) -> str | None:
    """Why ``name`` cannot be a slot/publication name, or None."""
    if not _NAME.fullmatch(name):
        return f"{kind} {name!r:.80} must be 1..63 of a-z 0-9 _ (not starting with a digit)"
    return None


class WalRelayStore:
    """What the WAL relay writes to PostgreSQL (through the pooled engine, never the
    replication connection). Each method is one statement in its own transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def ensure_publication(self, publication: str, table: str = "outbox") -> bool:
        """Create the publication of ``table``'s inserts if missing, or add ``table`` to
        it if it lost it (a dropped and recreated table leaves its publication empty,
        and a relay on it would wait forever for inserts it is never sent); True if it
        changed anything.

        Inserts only: updates and deletes of the table (settling, the writer's
        same-transaction delete) are never decoded for us.
        """
        if (problem := name_problem("publication", publication)) is not None:
            raise ValueError(problem)
        async with self._engine.begin() as conn:
            exists = (
                await conn.execute(
                    text("SELECT 1 FROM pg_publication WHERE pubname = :name"),
                    {"name": publication},
                )
            ).first()
            if exists is not None:
                member = (
                    await conn.execute(
                        text(
                            "SELECT 1 FROM pg_publication_tables WHERE pubname = :name "
                            "AND schemaname = current_schema() AND tablename = :table"
                        ),
                        {"name": publication, "table": table},
                    )
                ).first()
                if member is not None:
                    return False
                log.warning("publication %s had lost table %s: added again", publication, table)
                await conn.execute(text(f"ALTER PUBLICATION {publication} ADD TABLE {table}"))
                return True
            await conn.execute(
                text(
                    f"CREATE PUBLICATION {publication} FOR TABLE {table} WITH (publish = 'insert')"
                )
            )
            return True

    async def record_failed(self, failures: Sequence[tuple[WalEvent | WalBadRow, str]]) -> int:
        """Keep each row as ``failed`` with its error; rows without an id (beyond
        repair) are skipped and returned as a count for the caller to log."""
        rows = [(item.columns, error) for item, error in failures if item.columns.get("id")]
        if rows:
            cols = (
                "id",
                "aggregatetype",
                "aggregateid",
                "type",
                "payload",
                "timestamp",
                "headers",
                "partition",
                "sequence",
            )
            arrays: list[list[object]] = [[uuid.UUID(c["id"] or "") for c, _ in rows]]
            arrays += [[c.get(name) for c, _ in rows] for name in cols[1:]]
            arrays.append([error[:4000] for _, error in rows])
            async with self._engine.connect() as conn:
                raw = await conn.get_raw_connection()
                await raw.driver_connection.execute(_RECORD_FAILED, *arrays)  # type: ignore[union-attr]
        return len(failures) - len(rows)

    async def delete_upto(self, sequence: int) -> int:
        """Remove pending rows with ``sequence`` at most this (one statement)."""
        async with self._engine.connect() as conn:
            raw = await conn.get_raw_connection()
            status: str = await raw.driver_connection.execute(_DELETE_UPTO, sequence)  # type: ignore[union-attr]
        return int(status.rsplit(" ", 1)[-1])

    async def record_progress(self, slot: str, lsn: int, instance: str) -> None:
        """Note the slot's last confirmation (read by ``outbox status``)."""
        async with self._engine.connect() as conn:
            raw = await conn.get_raw_connection()
            await raw.driver_connection.execute(_PROGRESS, slot, lsn, instance)  # type: ignore[union-attr]
