"""the flash-sale shop: orders, inventory and payments schemas (one per service)

Revision ID: shop_0001
Revises:
Create Date: 2026-11-30 22:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "shop_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Each service owns one schema and touches no other's tables: they talk through
# events only. Order ids are 64-bit snowflakes (bigint).
UPGRADE = """
CREATE SCHEMA orders;
CREATE TABLE orders.products (
    sku text PRIMARY KEY,
    price_cents bigint NOT NULL CHECK (price_cents > 0)
);
CREATE TABLE orders.orders (
    id bigint PRIMARY KEY,
    customer text NOT NULL,
    items jsonb NOT NULL,
    amount_cents bigint NOT NULL,
    status text NOT NULL,
    step integer NOT NULL DEFAULT 0,
    reason text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    expired_at timestamptz
);
CREATE INDEX ix_orders_unfinished ON orders.orders (created_at)
    WHERE status NOT IN ('CONFIRMED', 'CANCELLED');
CREATE TABLE orders.history (
    order_id bigint NOT NULL REFERENCES orders.orders (id),
    step integer NOT NULL,
    status text NOT NULL,
    reason text,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (order_id, step)
);
CREATE TABLE orders.idempotency_keys (
    key text PRIMARY KEY,
    request_hash text NOT NULL,
    order_id bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE SCHEMA inventory;
CREATE TABLE inventory.stock (
    sku text PRIMARY KEY,
    initial integer NOT NULL CHECK (initial >= 0),
    available integer NOT NULL CHECK (available >= 0)
);
CREATE TABLE inventory.reservations (
    order_id bigint PRIMARY KEY,
    status text NOT NULL CHECK (status IN ('reserved', 'refused', 'released')),
    lines jsonb NOT NULL,
    reason text,
    created_at timestamptz NOT NULL DEFAULT now(),
    released_at timestamptz
);

CREATE SCHEMA payments;
CREATE TABLE payments.charges (
    order_id bigint PRIMARY KEY,
    charge_key text NOT NULL UNIQUE,
    amount_cents bigint NOT NULL,
    status text NOT NULL CHECK (status IN ('charged', 'failed', 'refunded', 'voided')),
    gateway_charge_id text,
    reason text,
    created_at timestamptz NOT NULL DEFAULT now(),
    refunded_at timestamptz
);
"""


def upgrade() -> None:
    # asyncpg prepares each statement: one command per execute.
    for statement in UPGRADE.split(";"):
        if statement.strip():
            op.execute(statement)


def downgrade() -> None:
    for schema in ("payments", "inventory", "orders"):
        op.execute(f"DROP SCHEMA {schema} CASCADE")
