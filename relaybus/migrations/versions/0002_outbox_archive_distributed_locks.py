"""outbox, archive, distributed locks

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 06:17:51.901798
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


NOTIFY_FUNCTION = """
CREATE OR REPLACE FUNCTION relaybus_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('relaybus_outbox', '');
  RETURN NULL;
END $$
"""


def upgrade() -> None:
    op.create_table('distributed_locks',
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('owner', sa.String(length=64), nullable=True),
    sa.Column('fence', sa.BigInteger(), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_distributed_locks'))
    )
    op.create_table('outbox',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('aggregatetype', sa.String(length=255), nullable=False),
    sa.Column('aggregateid', sa.String(length=255), nullable=False),
    sa.Column('type', sa.String(length=255), nullable=False),
    sa.Column('payload', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('timestamp', sa.DateTime(), server_default=sa.text("(now() AT TIME ZONE 'utc')"), nullable=False),
    sa.Column('headers', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('partition', sa.SmallInteger(), nullable=False),
    sa.Column('sequence', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('status', sa.String(length=16), server_default=sa.text("'pending'"), nullable=False),
    sa.Column('attempts', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox'))
    )
    op.create_index('ix_outbox_drain', 'outbox', ['partition', 'sequence'], unique=False,
                    postgresql_where=sa.text("status = 'pending'"))
    op.create_index('ix_outbox_failed_key', 'outbox', ['partition', 'aggregateid', 'sequence'],
                    unique=False, postgresql_where=sa.text("status = 'failed'"))
    op.create_table('outbox_archive',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('aggregatetype', sa.String(length=255), nullable=False),
    sa.Column('aggregateid', sa.String(length=255), nullable=False),
    sa.Column('type', sa.String(length=255), nullable=False),
    sa.Column('payload', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('timestamp', sa.DateTime(), nullable=False),
    sa.Column('headers', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('partition', sa.SmallInteger(), nullable=False),
    sa.Column('sequence', sa.BigInteger(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('archived_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox_archive'))
    )
    op.create_index('ix_outbox_archive_archived_at', 'outbox_archive', ['archived_at'], unique=False)
    # Wake the relay on commit: one NOTIFY per inserting statement (not per row),
    # delivered by PostgreSQL only if the transaction commits.
    op.execute(NOTIFY_FUNCTION)
    op.execute(
        "CREATE TRIGGER outbox_notify AFTER INSERT ON outbox "
        "FOR EACH STATEMENT EXECUTE FUNCTION relaybus_outbox_notify()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS outbox_notify ON outbox")
    op.execute("DROP FUNCTION IF EXISTS relaybus_outbox_notify()")
    op.drop_index('ix_outbox_archive_archived_at', table_name='outbox_archive')
    op.drop_table('outbox_archive')
    op.drop_index('ix_outbox_failed_key', table_name='outbox')
    op.drop_index('ix_outbox_drain', table_name='outbox')
    op.drop_table('outbox')
    op.drop_table('distributed_locks')
