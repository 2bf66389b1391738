"""The audit table: every operator action (retry, skip, replay, purge) leaves a row."""

from __future__ import annotations

import getpass
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Identity, String, func, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from relaybus.db.base import Base


class AuditEntry(Base):
    """One operator action: who, what, on which target, with which parameters."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
    actor: Mapped[str] = mapped_column(String(255), nullable=False)
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    target: Mapped[str] = mapped_column(String(255), nullable=False)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict)


async def record(
    session: AsyncSession,
    action: str,
    target: str,
    detail: dict[str, Any] | None = None,
    actor: str | None = None,
) -> AuditEntry:
    """Add an audit row to ``session``'s transaction (committed with the action
    itself) and return it, its ``id`` assigned. ``actor`` defaults to the OS user
    running the command; the console passes the signed-in user."""
    entry = AuditEntry(
        actor=actor or getpass.getuser(), action=action, target=target[:255], detail=detail or {}
    )
    session.add(entry)
    await session.flush()
    return entry


async def amend(session: AsyncSession, entry_id: int, detail: dict[str, Any]) -> None:
    """Replace the detail of audit row ``entry_id`` (an action recorded before it ran,
    completed with what it did: ``dlq.replay`` lists what it sent)."""
    entry = await session.get(AuditEntry, entry_id)
    if entry is not None:
        entry.detail = detail


async def find(session: AsyncSession, entry_id: int) -> AuditEntry | None:
    """The audit row ``entry_id``, or None."""
    return await session.get(AuditEntry, entry_id)


async def latest(session: AsyncSession, actions: tuple[str, ...], target: str) -> AuditEntry | None:
    """The newest row of one of ``actions`` on ``target``, or None."""
    query = (
        select(AuditEntry)
        .where(AuditEntry.action.in_(actions), AuditEntry.target == target)
        .order_by(AuditEntry.id.desc())
        .limit(1)
    )
    return (await session.execute(query)).scalar_one_or_none()
