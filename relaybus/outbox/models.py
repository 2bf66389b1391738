"""The ``outbox`` table (Debezium outbox-event-router columns + relay columns) and its archive."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Identity,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from relaybus.db.base import Base

PENDING = "pending"
FAILED = "failed"


class OutboxRow(Base):
    """One event waiting to be published.

    The first six columns are exactly what Debezium's outbox event router reads
    (``id``, ``aggregatetype``, ``aggregateid``, ``type``, ``payload``, ``timestamp``),
    so CDC can replace the relay without a schema change. The rest belong to the relay:
    ``partition`` (hash of aggregateid) and ``sequence`` give per-key order; ``status``
    is ``pending`` or ``failed``; ``attempts``/``last_error``/``next_attempt_at``
    describe publishing trouble to operators.
    """

    __tablename__ = "outbox"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    aggregatetype: Mapped[str] = mapped_column(String(255), nullable=False)
    aggregateid: Mapped[str] = mapped_column(String(255), nullable=False)
    type: Mapped[str] = mapped_column(String(255), nullable=False)
    payload: Mapped[Any] = mapped_column(JSONB)
    timestamp: Mapped[datetime] = mapped_column(
        DateTime(timezone=False),
        nullable=False,
        server_default=text("(now() AT TIME ZONE 'utc')"),
    )
    headers: Mapped[dict[str, str]] = mapped_column(
        JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    partition: Mapped[int] = mapped_column(SmallInteger, nullable=False)
    # Unique by construction (an identity); no unique index, one less index per insert.
    sequence: Mapped[int] = mapped_column(BigInteger, Identity(), nullable=False)
    status: Mapped[str] = mapped_column(
        String(16), nullable=False, server_default=text("'pending'")
    )
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        # The relay's drain query: one partition's pending rows in sequence order.
        Index(
            "ix_outbox_drain",
            "partition",
            "sequence",
            postgresql_where=text("status = 'pending'"),
        ),
        # "Is an earlier row of this key failed?" Failed rows are few, so this partial
        # index stays tiny and inserts (always 'pending') never touch it.
        Index(
            "ix_outbox_failed_key",
            "partition",
            "aggregateid",
            "sequence",
            postgresql_where=text("status = 'failed'"),
        ),
    )


class OutboxArchiveRow(Base):
    """Cold storage for rows that left the hot table: published or skipped by an operator.

    Partitioned by UTC day of ``archived_at`` (migration 0010): retention
    (``relaybus outbox purge``, the relay's purge tick) drops whole days instead of
    deleting rows. ``id`` is indexed, not unique (a partitioned table's unique index
    must contain the partition key): an id enqueued again after it was archived is
    archived again.
    """

    __tablename__ = "outbox_archive"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    aggregatetype: Mapped[str] = mapped_column(String(255), nullable=False)
    aggregateid: Mapped[str] = mapped_column(String(255), nullable=False)
    type: Mapped[str] = mapped_column(String(255), nullable=False)
    payload: Mapped[Any] = mapped_column(JSONB)
    timestamp: Mapped[datetime] = mapped_column(DateTime(timezone=False), nullable=False)
    headers: Mapped[dict[str, str]] = mapped_column(JSONB, nullable=False)
    partition: Mapped[int] = mapped_column(SmallInteger, nullable=False)
    sequence: Mapped[int] = mapped_column(BigInteger, nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False)
    outcome: Mapped[str] = mapped_column(String(16), nullable=False)
    archived_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=text("now()")
    )
    # No primary key in the database; the ORM needs an identity.
    __mapper_args__ = {"primary_key": [id, archived_at]}  # noqa: RUF012

    __table_args__ = (
        Index("ix_outbox_archive_id", "id"),
        # BRIN: near free to maintain on an append-only table; serves the purge of
        # the one day the retention cutoff falls in (older days are dropped whole).
        Index("ix_outbox_archive_archived_at", "archived_at", postgresql_using="brin"),
        # Few rows: lets ``outbox status`` count the not-published outcomes exactly
        # without reading the (large) published part of the archive.
        Index(
            "ix_outbox_archive_unpublished",
            "outcome",
            postgresql_where=text("outcome <> 'published'"),
        ),
        {"postgresql_partition_by": "RANGE (archived_at)"},
    )


class OutboxWaiterRow(Base):
    """A relay instance that has an idle partition and wants NOTIFY wake-ups.

    Outbox writers send NOTIFY only while some unexpired row exists: a NOTIFY
    takes a cluster-wide lock at commit, which writers should pay only when a relay
    is actually waiting. Busy relays keep draining without being told.
    """

    __tablename__ = "outbox_waiters"

    instance: Mapped[str] = mapped_column(String(255), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class OutboxWalSlotRow(Base):
    """The WAL relay's last confirmation to a replication slot (LSN as an integer,
    when, by which instance): ``outbox status`` reads how long a slot has gone
    without a consumer from it."""

    __tablename__ = "outbox_wal_slots"

    slot_name: Mapped[str] = mapped_column(String(63), primary_key=True)
    confirmed_lsn: Mapped[int] = mapped_column(BigInteger, nullable=False)
    confirmed_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=text("now()")
    )
    instance: Mapped[str] = mapped_column(String(255), nullable=False)


class OutboxStallRow(Base):
    """A destination a relay instance is waiting on (``Stall``): written every
    coordination tick while it lasts, deleted when it ends."""

    __tablename__ = "outbox_stalls"

    instance: Mapped[str] = mapped_column(String(255), primary_key=True)
    broker: Mapped[str] = mapped_column(String(32), primary_key=True)
    destination: Mapped[str] = mapped_column(String(512), primary_key=True)
    leader: Mapped[str] = mapped_column(String(512), nullable=False)
    since: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    waiting: Mapped[int] = mapped_column(Integer, nullable=False)
    seen_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=text("now()")
    )
