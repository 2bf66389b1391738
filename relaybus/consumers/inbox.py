"""The inbox: which messages a consumer has applied, written with the effects."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ARRAY, DateTime, Index, String, bindparam, text
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from relaybus.db.base import Base


class InboxRow(Base):
    """``(consumer, message_id)``: this consumer applied this message's effects."""

    __tablename__ = "inbox"

    consumer: Mapped[str] = mapped_column(String(255), primary_key=True)
    message_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    processed_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=text("now()")
    )

    __table_args__ = (Index("ix_inbox_processed_at", "processed_at"),)


_CLAIM = text(
    "INSERT INTO inbox (consumer, message_id) VALUES (:consumer, :id) "
    "ON CONFLICT DO NOTHING RETURNING 1"
)
_CLAIM_MANY = text(
    "INSERT INTO inbox (consumer, message_id) SELECT :consumer, unnest(:ids) "
    "ON CONFLICT DO NOTHING RETURNING message_id"
).bindparams(bindparam("ids", type_=ARRAY(UUID(as_uuid=True))))
# In seconds: make_interval's ``days`` is an integer (a fractional retention was truncated).
_PURGE = text(
    "DELETE FROM inbox WHERE processed_at < "
    "now() - make_interval(secs => CAST(:days AS double precision) * 86400)"
)


class Inbox:
    """Exactly-once effects over at-least-once delivery, inside the handler's transaction.

    ``claim`` inserts the row first: a concurrent delivery of the same id blocks on the
    primary key until the first transaction ends, then sees the row (duplicate) if it
    committed, or claims it itself if it rolled back. So effects apply once per
    ``(consumer, message_id)`` as long as the row outlives redeliveries (retention).
    """

    async def claim(self, session: AsyncSession, consumer: str, message_id: uuid.UUID) -> bool:
        """True if this transaction now owns the message; False if already applied."""
        result = await session.execute(_CLAIM, {"consumer": consumer, "id": message_id})
        return result.first() is not None

    async def claim_many(
        self, session: AsyncSession, consumer: str, message_ids: list[uuid.UUID]
    ) -> set[uuid.UUID]:
        """Claim several ids in one statement; returns those this transaction now owns."""
        result = await session.execute(_CLAIM_MANY, {"consumer": consumer, "ids": message_ids})
        return {row[0] for row in result}

    async def purge(self, engine: AsyncEngine, older_than_days: float) -> int:
        """Delete rows older than the retention period; returns how many."""
        async with engine.begin() as conn:
            result = await conn.execute(_PURGE, {"days": older_than_days})
        return int(result.rowcount)
