"""outbox_archive: a partial index over the rows that were not published

``relaybus outbox status`` counts the archive's outcomes. Counting every row is
O(archive) (seconds at 10 M rows); the rows that were *not* published (skipped,
dead) are few, so they are counted exactly through this index, and the published
ones are estimated from PostgreSQL's live-tuple statistics.

Revision ID: 0008
Revises: 0005
Create Date: 2026-12-02 01:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "CREATE INDEX ix_outbox_archive_unpublished ON outbox_archive (outcome) "
        "WHERE outcome <> 'published'"
    )


def downgrade() -> None:
    op.execute("DROP INDEX ix_outbox_archive_unpublished")
