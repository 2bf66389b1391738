"""outbox_archive: partitioned by day of ``archived_at``; retention drops partitions

Every published row is moved into the archive, so each insert there is on the
polling relay's hottest path, and each purged row used to be a DELETE (plus dead
tuples and vacuum). Now:

- the archive is ``PARTITION BY RANGE (archived_at)``, one partition per UTC day
  (``outbox_archive_YYYYMMDD``) plus ``outbox_archive_default`` for rows outside
  any prepared day; ``relaybus_archive_partitions(first, last)`` creates days
  (moving their rows out of the default partition) and the relay calls it ahead;
- retention (``relaybus_archive_purge(cutoff)``) drops whole partitions older
  than the cutoff and deletes only the rows of the day the cutoff falls in;
- ``id`` is indexed but no longer unique (a partitioned table's unique index must
  contain the partition key): settling appends without a uniqueness probe; an id
  written to the outbox again after it was archived is archived again, and
  ``outbox show`` returns its latest archived row;
- ``archived_at`` has a BRIN index instead of a B-tree: near free to maintain on
  an append-only table, enough for the day the cutoff falls in.

Existing rows are copied into the new table (the upgrade takes as long as
copying the archive; the relay can keep running but its settles wait on the lock).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 18:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = (
    "id, aggregatetype, aggregateid, type, payload, timestamp, headers, partition, "
    "sequence, attempts, outcome, archived_at"
)

# Creates the day partitions first..last that are missing. A day whose rows landed in
# the default partition (nobody prepared it in time) gets them moved into its own
# partition before it is attached, since PostgreSQL refuses to attach a range the
# default partition holds rows of. Serialized by an advisory lock: relays call it
# concurrently, and CREATE TABLE IF NOT EXISTS alone races on the catalog.
PARTITIONS_FUNCTION = """
CREATE FUNCTION relaybus_archive_partitions(first_day date, last_day date)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    day date;
    part text;
    lo timestamptz;
    hi timestamptz;
    created integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('relaybus_archive_partitions'));
    FOR day IN SELECT generate_series(first_day, last_day, interval '1 day')::date LOOP
        part := 'outbox_archive_' || to_char(day, 'YYYYMMDD');
        -- pg_class read by a fresh snapshot (not to_regclass's cache), so a day
        -- created by a caller we waited for on the lock is seen.
        CONTINUE WHEN EXISTS (SELECT 1 FROM pg_class
                               WHERE relname = part
                                 AND relnamespace = current_schema()::regnamespace);
        lo := day::timestamp AT TIME ZONE 'UTC';
        hi := (day + 1)::timestamp AT TIME ZONE 'UTC';
        EXECUTE format('CREATE TABLE %I (LIKE outbox_archive INCLUDING DEFAULTS)', part);
        EXECUTE format(
            'WITH moved AS (DELETE FROM outbox_archive_default '
            'WHERE archived_at >= %L AND archived_at < %L RETURNING *) '
            'INSERT INTO %I SELECT * FROM moved', lo, hi, part);
        EXECUTE format(
            'ALTER TABLE outbox_archive ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
            part, lo, hi);
        created := created + 1;
    END LOOP;
    RETURN created;
END $$
"""

# Removes archived rows older than cutoff: day partitions that end at or before it
# are counted and dropped; the rows of the day it falls in (and of the default
# partition) are deleted. Returns the rows removed.
PURGE_FUNCTION = """
CREATE FUNCTION relaybus_archive_purge(cutoff timestamptz)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    part text;
    n bigint;
    removed bigint := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('relaybus_archive_partitions'));
    FOR part IN
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'outbox_archive'::regclass
           AND c.relname ~ '^outbox_archive_[0-9]{8}$'
           AND (to_date(substring(c.relname from 16), 'YYYYMMDD') + 1)::timestamp
               AT TIME ZONE 'UTC' <= cutoff
         ORDER BY c.relname
    LOOP
        EXECUTE format('SELECT count(*) FROM %I', part) INTO n;
        EXECUTE format('DROP TABLE %I', part);
        removed := removed + n;
    END LOOP;
    DELETE FROM outbox_archive WHERE archived_at < cutoff;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN removed + n;
END $$
"""


def upgrade() -> None:
    op.execute("ALTER TABLE outbox_archive RENAME TO outbox_archive_unpartitioned")
    op.execute(
        "ALTER TABLE outbox_archive_unpartitioned RENAME CONSTRAINT pk_outbox_archive "
        "TO pk_outbox_archive_unpartitioned"
    )
    op.execute("DROP INDEX ix_outbox_archive_archived_at")
    op.execute("DROP INDEX ix_outbox_archive_unpublished")
    op.execute(
        "CREATE TABLE outbox_archive ("
        " id uuid NOT NULL,"
        " aggregatetype varchar(255) NOT NULL,"
        " aggregateid varchar(255) NOT NULL,"
        " type varchar(255) NOT NULL,"
        " payload jsonb NOT NULL,"
        " timestamp timestamp without time zone NOT NULL,"
        " headers jsonb NOT NULL,"
        " partition smallint NOT NULL,"
        " sequence bigint NOT NULL,"
        " attempts integer NOT NULL,"
        " outcome varchar(16) NOT NULL,"
        " archived_at timestamptz NOT NULL DEFAULT now()"
        ") PARTITION BY RANGE (archived_at)"
    )
    op.execute("CREATE INDEX ix_outbox_archive_id ON outbox_archive (id)")
    op.execute(
        "CREATE INDEX ix_outbox_archive_archived_at ON outbox_archive USING brin (archived_at)"
    )
    op.execute(
        "CREATE INDEX ix_outbox_archive_unpublished ON outbox_archive (outcome) "
        "WHERE outcome <> 'published'"
    )
    op.execute("CREATE TABLE outbox_archive_default PARTITION OF outbox_archive DEFAULT")
    op.execute(PARTITIONS_FUNCTION)
    op.execute(PURGE_FUNCTION)
    # Days of the existing rows, today and the next two (the relay keeps preparing).
    op.execute(
        "SELECT relaybus_archive_partitions("
        " coalesce((SELECT min(archived_at AT TIME ZONE 'UTC')::date"
        "             FROM outbox_archive_unpartitioned),"
        "          (now() AT TIME ZONE 'UTC')::date),"
        " (now() AT TIME ZONE 'UTC')::date + 2)"
    )
    op.execute(
        f"INSERT INTO outbox_archive ({_COLUMNS}) "
        f"SELECT {_COLUMNS} FROM outbox_archive_unpartitioned"
    )
    op.execute("DROP TABLE outbox_archive_unpartitioned")


def downgrade() -> None:
    op.execute("ALTER TABLE outbox_archive RENAME TO outbox_archive_partitioned")
    op.execute("CREATE TABLE outbox_archive (LIKE outbox_archive_partitioned INCLUDING DEFAULTS)")
    op.execute(
        f"INSERT INTO outbox_archive ({_COLUMNS}) "
        f"SELECT DISTINCT ON (id) {_COLUMNS} FROM outbox_archive_partitioned "
        "ORDER BY id, archived_at DESC"
    )
    op.execute("DROP TABLE outbox_archive_partitioned")
    op.execute("ALTER TABLE outbox_archive ADD CONSTRAINT pk_outbox_archive PRIMARY KEY (id)")
    op.execute("CREATE INDEX ix_outbox_archive_archived_at ON outbox_archive (archived_at)")
    op.execute(
        "CREATE INDEX ix_outbox_archive_unpublished ON outbox_archive (outcome) "
        "WHERE outcome <> 'published'"
    )
    op.execute("DROP FUNCTION relaybus_archive_purge(timestamptz)")
    op.execute("DROP FUNCTION relaybus_archive_partitions(date, date)")
