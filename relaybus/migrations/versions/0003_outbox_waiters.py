"""outbox NOTIFY only while a relay waits

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 08:55:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# NOTIFY serialises committing transactions on a cluster-wide queue lock; skipping it
# while no relay is idle keeps the writers' cost to one index probe.
CONDITIONAL_NOTIFY = """
CREATE OR REPLACE FUNCTION relaybus_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM outbox_waiters WHERE expires_at > now()) THEN
    PERFORM pg_notify('relaybus_outbox', '');
  END IF;
  RETURN NULL;
END $$
"""

ALWAYS_NOTIFY = """
CREATE OR REPLACE FUNCTION relaybus_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('relaybus_outbox', '');
  RETURN NULL;
END $$
"""


def upgrade() -> None:
    op.create_table(
        "outbox_waiters",
        sa.Column("instance", sa.String(length=255), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("instance", name=op.f("pk_outbox_waiters")),
    )
    op.execute(CONDITIONAL_NOTIFY)


def downgrade() -> None:
    op.execute(ALWAYS_NOTIFY)
    op.drop_table("outbox_waiters")
