"""An in-memory ``OutboxStore``, in the spirit of procrastinate's in-memory connector:
the relay's drain, per-key deferral and failed-row handling tested without a database."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from relaybus.brokers.stalls import Stall
from relaybus.locks.base import Lease
from relaybus.locks.memory import InMemoryLock
from relaybus.message import Message
from relaybus.outbox.store import Backlog, BadRow, Fetched, PendingRow, row_problem, unpublishable
from relaybus.outbox.writer import partition_for


@dataclass
class StoredRow:
    """One outbox row: the message plus the relay's columns."""

    message: Message
    partition: int
    sequence: int
    headers: Any = field(default_factory=dict)  # as stored: may be anything (psql)
    status: str = "pending"
    attempts: int = 0
    last_error: str | None = None


class InMemoryOutboxStore:
    """``OutboxStore`` on a list; fenced writes check the same ``InMemoryLock`` the relay
    leases from. Passes the store contract suite the PostgreSQL store passes."""

    def __init__(self, locks: InMemoryLock, partitions: int = 16) -> None:
        self.locks = locks
        self.partitions = partitions
        self.rows: list[StoredRow] = []
        self.archived: list[StoredRow] = []
        self.waiting: set[str] = set()
        self.stalls: dict[str, list[Stall]] = {}
        self._sequence = 0

    def add(self, message: Message, headers: Any = None) -> StoredRow:
        """Insert a committed row (as ``Outbox.enqueue`` + commit would)."""
        self._sequence += 1
        row = StoredRow(
            message,
            partition_for(message.aggregateid, self.partitions),
            self._sequence,
            headers if headers is not None else dict(message.extra_headers),
        )
        self.rows.append(row)
        return row

    async def fetch(
        self,
        partition: int,
        limit: int,
        max_bytes: int = 2**62,
        skip_keys: Sequence[str] = (),
    ) -> Fetched:
        skip = set(skip_keys)
        failed_keys = {
            r.message.aggregateid: r.sequence
            for r in sorted(self.rows, key=lambda r: -r.sequence)
            if r.partition == partition and r.status == "failed"
        }
        due = [
            r
            for r in sorted(self.rows, key=lambda r: r.sequence)
            if r.partition == partition
            and r.status == "pending"
            and r.message.aggregateid not in skip
            and not (
                r.message.aggregateid in failed_keys
                and failed_keys[r.message.aggregateid] < r.sequence
            )
        ][:limit]
        rows: list[PendingRow] = []
        bad: list[BadRow] = []
        total = 0
        for r in due:
            if rows and total + len(r.message.payload) > max_bytes:
                break
            total += len(r.message.payload)
            m = r.message
            problem = row_problem(m.aggregatetype, m.type, r.headers)
            if problem is not None:
                bad.append(unpublishable(m.id, r.sequence, problem))
            else:
                rows.append(PendingRow(r.sequence, r.attempts, m))
        return Fetched(rows, bad)

    async def settle(
        self,
        lease: Lease,
        published: Sequence[uuid.UUID],
        failed: Sequence[tuple[uuid.UUID, str]],
    ) -> int | None:
        if not self.locks.fence_holds(lease.name, lease.fence):
            return None
        done = set(published)
        moved = [r for r in self.rows if r.message.id in done]
        self.archived.extend(moved)
        self.rows = [r for r in self.rows if r.message.id not in done]
        errors = dict(failed)
        for r in self.rows:
            if r.message.id in errors:
                r.status, r.last_error = "failed", errors[r.message.id]
                r.attempts += 1
        return len(moved)

    async def note_transient(
        self, lease: Lease, ids: Sequence[uuid.UUID], error: str, delay: float
    ) -> None:
        if not self.locks.fence_holds(lease.name, lease.fence):
            return
        wanted = set(ids)
        for r in self.rows:
            if r.message.id in wanted:
                r.attempts += 1
                r.last_error = error

    async def backlog(self) -> Backlog:
        pending = sum(r.status == "pending" for r in self.rows)
        failed = sum(r.status == "failed" for r in self.rows)
        return Backlog(pending, failed, 0.0)

    async def purge_archive(self, older_than_days: float) -> int:
        return 0

    async def wait_for_notify(self, instance: str, ttl: float) -> None:
        self.waiting.add(instance)

    async def stop_waiting(self, instance: str) -> None:
        self.waiting.discard(instance)

    async def record_stalls(self, instance: str, stalls: Sequence[Stall]) -> None:
        self.stalls[instance] = list(stalls)
