"""stream processors: admission statuses, inventory shard epochs and the command log

Revision ID: shop_0002
Revises: shop_0001
Create Date: 2026-12-01 02:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "shop_0002"
down_revision: str | None = "shop_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = """
DROP INDEX orders.ix_orders_unfinished;
CREATE INDEX ix_orders_unfinished ON orders.orders (created_at)
    WHERE status NOT IN ('CONFIRMED', 'CANCELLED', 'REJECTED');

CREATE TABLE inventory.shard_epochs (
    epoch integer PRIMARY KEY CHECK (epoch > 0),
    shards integer[] NOT NULL CHECK (cardinality(shards) > 0),
    vnodes integer NOT NULL CHECK (vnodes > 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    activated_at timestamptz,
    note text
);

CREATE TABLE inventory.command_log (
    id bigserial PRIMARY KEY,
    product text NOT NULL,
    route_seq bigint NOT NULL,
    epoch integer NOT NULL,
    shard integer NOT NULL,
    router_fence bigint NOT NULL,
    order_id bigint NOT NULL,
    command text NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX ix_command_log_product ON inventory.command_log (product, id)
"""

DOWNGRADE = """
DROP TABLE inventory.command_log;
DROP TABLE inventory.shard_epochs;
DROP INDEX orders.ix_orders_unfinished;
CREATE INDEX ix_orders_unfinished ON orders.orders (created_at)
    WHERE status NOT IN ('CONFIRMED', 'CANCELLED')
"""


def upgrade() -> None:
    # asyncpg prepares each statement: one command per execute.
    for statement in UPGRADE.split(";"):
        if statement.strip():
            op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE.split(";"):
        if statement.strip():
            op.execute(statement)
