"""tickets and the notifications the handler writes

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.execute("CREATE TABLE tickets (id bigserial PRIMARY KEY, title text NOT NULL)")
    op.execute(
        "CREATE TABLE ticket_notifications (ticket_id bigint PRIMARY KEY, title text NOT NULL)"
    )


def downgrade() -> None:
    op.execute("DROP TABLE ticket_notifications")
    op.execute("DROP TABLE tickets")
