"""outbox_wal_slots: the WAL relay's last confirmation per replication slot

``relaybus relay --source wal`` records here, at most once a second, the LSN it last
confirmed to its slot and when. ``relaybus outbox status`` reads it to tell how long
a slot has gone without a consumer (PostgreSQL 15 keeps no such time), because an
abandoned slot keeps every WAL segment written since.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 14:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "CREATE TABLE outbox_wal_slots ("
        " slot_name varchar(63) PRIMARY KEY,"
        " confirmed_lsn bigint NOT NULL,"
        " confirmed_at timestamptz NOT NULL DEFAULT now(),"
        " instance varchar(255) NOT NULL)"
    )


def downgrade() -> None:
    op.execute("DROP TABLE outbox_wal_slots")
