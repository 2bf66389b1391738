"""Replaying a time window from the outbox archive (RabbitMQ keeps no log).

A published row leaves the hot table for ``outbox_archive`` and is purged after the
archive's retention (hot/cold separation). Until then it can be published again,
as it was, with the same id: consumers' inboxes skip what they already applied.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.brokers.publisher import Publisher, PublishError
from relaybus.message import Message
from relaybus.outbox.routing import Router
from relaybus.outbox.store import to_message
from relaybus.tracing.redrive import redrive_traceparent

BATCH = 500

# Same column order as the relay's fetch (outbox.store._FETCH), so ``to_message``
# reads an archived row exactly as the relay read it the first time.
_WINDOW = text(
    """
    SELECT id, aggregatetype, aggregateid, type, payload::text AS payload, timestamp,
           headers::text AS headers, sequence, attempts, partition
      FROM outbox_archive
     WHERE outcome = 'published' AND timestamp >= :since AND timestamp < :until
       AND (partition, sequence) > (:after_partition, :after_sequence)
       AND (CAST(:key AS text) IS NULL OR aggregateid = :key)
     ORDER BY partition, sequence
     LIMIT :limit
    """
)


class ArchiveWindowError(Exception):
    """The window cannot be served from the archive (older than its retention)."""


@dataclass(frozen=True)
class ArchiveReplay:
    """What a replay from the archive published (``sent``) and left out: rows
    whose type does not match ``--type`` or is not routed to the broker."""

    sent: int
    not_matching: int


def check_retention(since: datetime, retention_days: float, now: datetime) -> None:
    """Raise ``ArchiveWindowError`` if ``since`` is older than the archive keeps rows."""
    horizon = now - timedelta(days=retention_days)
    if since < horizon:
        raise ArchiveWindowError(
            f"the window starts at {since.isoformat()}, before the archive's retention "
            f"({retention_days:g} days: rows archived before {horizon.isoformat()} are "
            "purged); RabbitMQ keeps no log, so that part cannot be replayed"
        )


async def archived_messages(
    engine: AsyncEngine, since: datetime, until: datetime, key: str | None
) -> AsyncIterator[list[Message]]:
    """Published archived rows with ``since <= timestamp < until`` (the event's
    time), in (partition, sequence) order, which is per-key commit order, in
    batches of ``BATCH`` (keyset paging: bounded memory)."""
    after = (-1, -1)
    naive = {"since": _naive(since), "until": _naive(until)}
    while True:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    _WINDOW,
                    {
                        **naive,
                        "after_partition": after[0],
                        "after_sequence": after[1],
                        "key": key,
                        "limit": BATCH,
                    },
                )
            ).all()
        if not rows:
            return
        after = (rows[-1][9], rows[-1][7])
        yield [to_message(r) for r in rows]


async def replay_archive(
    engine: AsyncEngine,
    publisher: Publisher,
    router: Router,
    broker: str,
    since: datetime,
    until: datetime,
    type_pattern: str | None,
    key: str | None,
    progress: Callable[[int], None] = lambda n: None,
    audit_id: int | None = None,
) -> ArchiveReplay:
    """Publish again, through ``publisher`` (started by the caller), the archived
    rows of the window whose type the ``router`` sends to ``broker`` (and matches
    ``type_pattern``), with their original ids and headers, per-key order kept.
    Raises ``PublishError`` on the first row the broker refuses (rows before it are
    published; running the same replay again republishes them, and inboxes skip
    them). With tracing on, each is sent in a new trace linked to its original's
    (``relaybus.tracing.redrive``), naming ``audit_id``."""
    sent = not_matching = 0
    async for batch in archived_messages(engine, since, until, key):
        chosen = [
            m
            for m in batch
            if broker in router.brokers_for(m.type)
            and (type_pattern is None or fnmatchcase(m.type, type_pattern))
        ]
        not_matching += len(batch) - len(chosen)
        if chosen:
            chosen = [_redriven(m, broker, audit_id) for m in chosen]
            outcomes = await publisher.publish(chosen)
            for message, outcome in zip(chosen, outcomes, strict=True):
                if not outcome.ok:
                    raise PublishError(f"message {message.id}: {outcome.error}")
            sent += len(chosen)
        progress(len(batch))
    return ArchiveReplay(sent, not_matching)


async def count_archived(engine: AsyncEngine, since: datetime, until: datetime) -> int:
    """How many published archived rows fall in the window (for progress)."""
    async with engine.connect() as conn:
        found = await conn.execute(
            text(
                "SELECT count(*) FROM outbox_archive WHERE outcome = 'published' "
                "AND timestamp >= :since AND timestamp < :until"
            ),
            {"since": _naive(since), "until": _naive(until)},
        )
        return int(found.scalar_one())


def _redriven(message: Message, broker: str, audit_id: int | None) -> Message:
    original = {"traceparent": message.traceparent} if message.traceparent else {}
    new = redrive_traceparent(
        original,
        action="replay.archive",
        destination=broker,
        audit_id=audit_id,
        message_id=str(message.id),
    )
    return message if new is None else dataclasses.replace(message, traceparent=new)


def _naive(when: datetime) -> datetime:
    # The outbox's ``timestamp`` column is naive UTC (Debezium's outbox schema).
    return when.astimezone(UTC).replace(tzinfo=None)
