"""Alembic environment of the shop's schemas (orders, inventory, payments), version
table shop_alembic_version; relaybus's own tables are a separate history."""

from __future__ import annotations

from relaybus.db import alembic_env

alembic_env.run(None)
