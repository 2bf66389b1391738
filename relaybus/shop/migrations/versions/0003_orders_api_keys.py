"""orders.api_keys; idempotency keys scoped per customer

The orders API authenticates every request with a per-customer API key (only the
secret's SHA-256 is stored); the customer and the VIP flag come from the key's row,
never from the request body. Idempotency keys are per customer (one customer's key
cannot answer with another's order) and are purged after a retention, hence the
index on ``created_at``.

Revision ID: shop_0003
Revises: shop_0002
Create Date: 2026-12-07 01:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "shop_0003"
down_revision: str | None = "shop_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "CREATE TABLE orders.api_keys ("
        " key_id text PRIMARY KEY,"
        " customer text NOT NULL,"
        " vip boolean NOT NULL DEFAULT false,"
        " secret_sha256 bytea NOT NULL,"
        " created_at timestamptz NOT NULL DEFAULT now(),"
        " revoked_at timestamptz)"
    )
    op.execute("CREATE INDEX api_keys_customer ON orders.api_keys (customer)")
    op.execute("ALTER TABLE orders.idempotency_keys ADD COLUMN customer text NOT NULL DEFAULT ''")
    op.execute("ALTER TABLE orders.idempotency_keys DROP CONSTRAINT idempotency_keys_pkey")
    op.execute("ALTER TABLE orders.idempotency_keys ADD PRIMARY KEY (customer, key)")
    op.execute("CREATE INDEX idempotency_keys_created_at ON orders.idempotency_keys (created_at)")


def downgrade() -> None:
    op.execute("DROP INDEX orders.idempotency_keys_created_at")
    op.execute("ALTER TABLE orders.idempotency_keys DROP CONSTRAINT idempotency_keys_pkey")
    op.execute("DELETE FROM orders.idempotency_keys a USING orders.idempotency_keys b "
               "WHERE a.key = b.key AND a.ctid < b.ctid")  # fmt: skip
    op.execute("ALTER TABLE orders.idempotency_keys ADD PRIMARY KEY (key)")
    op.execute("ALTER TABLE orders.idempotency_keys DROP COLUMN customer")
    op.execute("DROP TABLE orders.api_keys")
