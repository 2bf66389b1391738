"""outbox_stalls: destinations a relay is waiting on, for operators

A relay whose broker stops acknowledging one destination (a Kafka partition whose
leader died or froze) defers that destination's rows and keeps publishing the rest;
it reports here, every coordination tick, which destinations stall, since when and
on which broker node. ``relaybus outbox status`` and the console read it; a row not
refreshed for a while (its relay is gone) is shown as stale.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 07:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "CREATE TABLE outbox_stalls ("
        " instance varchar(255) NOT NULL,"
        " broker varchar(32) NOT NULL,"
        " destination varchar(512) NOT NULL,"
        " leader varchar(512) NOT NULL,"
        " since timestamptz NOT NULL,"
        " waiting integer NOT NULL,"
        " seen_at timestamptz NOT NULL DEFAULT now(),"
        " PRIMARY KEY (instance, broker, destination))"
    )


def downgrade() -> None:
    op.execute("DROP TABLE outbox_stalls")
