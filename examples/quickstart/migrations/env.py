"""The service's Alembic environment: relaybus's tables (their own history and version
table), then the service's own migrations, on one connection."""

from alembic import context
from sqlalchemy import create_engine

import relaybus.db.migrations
from relaybus.settings import Settings

url = Settings().database_url.replace("+asyncpg", "+psycopg2")
with create_engine(url).connect() as connection:
    relaybus.db.migrations.upgrade(connection)
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
