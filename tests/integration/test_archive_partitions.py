"""The archive partitioned by day (migration 0010) on the real database: the relay's
purge tick prepares the coming days, rows of an unprepared day wait in the default
partition and move to their own when it is prepared, retention drops whole days and
trims the day its cutoff falls in, and an id archived twice shows its latest row."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.ids import uuid7
from relaybus.outbox.admin import OutboxAdmin
from relaybus.outbox.store import PostgresOutboxStore
from tests.support.cli import run_cli
from tests.support.outboxdata import delete_archived

_ARCHIVE = text(
    "INSERT INTO outbox_archive (id, aggregatetype, aggregateid, type, payload, timestamp, "
    "headers, partition, sequence, attempts, outcome, archived_at) "
    "VALUES (:id, :a, 'k', 't', CAST(:payload AS jsonb), now(), '{}', 0, 1, 1, 'published', "
    ":at) RETURNING tableoid::regclass::text"
)


def _name(day: date) -> str:
    return f"outbox_archive_{day:%Y%m%d}"


async def _exists(engine: AsyncEngine, table: str) -> bool:
    async with engine.connect() as conn:
        found = await conn.execute(text("SELECT to_regclass(:t) IS NOT NULL"), {"t": table})
        return bool(found.scalar_one())


async def _archive(engine: AsyncEngine, agg: str, at: datetime, payload: str = "{}") -> str:
    """Archive one row at ``at``; the partition it landed in."""
    async with engine.begin() as conn:
        result = await conn.execute(
            _ARCHIVE, {"id": uuid7(), "a": agg, "at": at, "payload": payload}
        )
        return str(result.scalar_one())


async def _where(engine: AsyncEngine, agg: str) -> list[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT tableoid::regclass::text FROM outbox_archive WHERE aggregatetype = :a "
                "ORDER BY archived_at"
            ),
            {"a": agg},
        )
        return list(rows.scalars())


async def test_the_purge_tick_prepares_the_coming_days_and_settles_land_in_today(
    engine: AsyncEngine,
) -> None:
    await PostgresOutboxStore(engine).purge_archive(older_than_days=7)
    today = datetime.now(UTC).date()
    for ahead in range(3):
        assert await _exists(engine, _name(today + timedelta(days=ahead)))
    agg = f"part{uuid7().hex[-10:]}"
    try:
        async with engine.begin() as conn:
            landed = await conn.execute(
                text(
                    "INSERT INTO outbox_archive (id, aggregatetype, aggregateid, type, payload, "
                    "timestamp, headers, partition, sequence, attempts, outcome) VALUES "
                    "(:id, :a, 'k', 't', '{}', now(), '{}', 0, 1, 1, 'published') "
                    "RETURNING tableoid::regclass::text"
                ),
                {"id": uuid7(), "a": agg},
            )
            # archived_at defaults to now(): the transaction's start, today in UTC
            # unless it began before midnight.
            assert landed.scalar_one() in {_name(today), _name(datetime.now(UTC).date())}
    finally:
        await delete_archived(engine, agg)


async def test_an_unprepared_days_rows_wait_in_default_and_move_when_it_is_prepared(
    engine: AsyncEngine,
) -> None:
    agg = f"part{uuid7().hex[-10:]}"
    # A day no other test touches, in the future (its partition cannot exist, and no
    # relay's retention, which drops days older than a week, touches it meanwhile).
    day = datetime.now(UTC).date() + timedelta(days=1500 + uuid7().int % 500)
    noon = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    assert await _archive(engine, agg, noon) == "outbox_archive_default"
    async with engine.begin() as conn:
        created = await conn.execute(text("SELECT relaybus_archive_partitions(:d, :d)"), {"d": day})
        assert created.scalar_one() == 1
    try:
        assert await _where(engine, agg) == [_name(day)]
    finally:
        await _drop(engine, day)


async def test_concurrent_preparers_of_the_same_days_both_succeed(engine: AsyncEngine) -> None:
    """Two relays' purge ticks at once: one creates each day, the other finds it."""
    # Future days: no relay's retention drops them while the test looks.
    first = datetime.now(UTC).date() + timedelta(days=2100 + uuid7().int % 500)
    last = first + timedelta(days=3)

    async def prepare() -> int:
        async with engine.begin() as conn:
            result = await conn.execute(
                text("SELECT relaybus_archive_partitions(:f, :l)"), {"f": first, "l": last}
            )
            return int(result.scalar_one())

    try:
        created = await asyncio.gather(prepare(), prepare())
        assert sorted(created) == [0, 4]
    finally:
        for n in range(4):
            await _drop(engine, first + timedelta(days=n))


async def test_retention_drops_whole_days_and_trims_the_day_of_the_cutoff(
    engine: AsyncEngine,
) -> None:
    agg = f"part{uuid7().hex[-10:]}"
    # Days inside every relay's retention (7 days, which no test lowers): a relay
    # running meanwhile (its purge tick drops days older than that) leaves them alone.
    old = datetime.now(UTC).date() - timedelta(days=4)
    cutoff_day = old + timedelta(days=1)
    async with engine.begin() as conn:
        await conn.execute(
            text("SELECT relaybus_archive_partitions(:f, :l)"), {"f": old, "l": cutoff_day}
        )
    at = [
        datetime(old.year, old.month, old.day, 6, tzinfo=UTC),
        datetime(cutoff_day.year, cutoff_day.month, cutoff_day.day, 1, tzinfo=UTC),
        datetime(cutoff_day.year, cutoff_day.month, cutoff_day.day, 23, tzinfo=UTC),
    ]
    for moment in at:
        await _archive(engine, agg, moment)
    # Cut at noon of the second day: the first day goes whole, the second keeps 23:00.
    cutoff = datetime(cutoff_day.year, cutoff_day.month, cutoff_day.day, 12, tzinfo=UTC)
    days = (datetime.now(UTC) - cutoff).total_seconds() / 86400
    try:
        proc = run_cli("outbox", "purge", "--older-than", f"{days:.6f}", "--yes", "--json")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["purged"] >= 2
        assert not await _exists(engine, _name(old))
        assert await _exists(engine, _name(cutoff_day))
        assert await _where(engine, agg) == [_name(cutoff_day)]
    finally:
        await _drop(engine, old)
        await _drop(engine, cutoff_day)


async def test_an_id_archived_twice_shows_its_latest_row(engine: AsyncEngine) -> None:
    """The archive's id is no longer unique: an id enqueued again after it was archived
    is archived again, and ``outbox show`` returns the later row."""
    agg = f"part{uuid7().hex[-10:]}"
    message_id = uuid7()
    now = datetime.now(UTC)
    try:
        async with engine.begin() as conn:
            for hours, version in ((2, "first"), (1, "second")):
                await conn.execute(
                    _ARCHIVE,
                    {
                        "id": message_id,
                        "a": agg,
                        "at": now - timedelta(hours=hours),
                        "payload": json.dumps({"v": version}),
                    },
                )
        shown = await OutboxAdmin(engine).show(message_id)
        assert shown is not None
        assert shown["payload"] == {"v": "second"}
        assert shown["in_table"] == "outbox_archive"
    finally:
        await delete_archived(engine, agg)


async def _drop(engine: AsyncEngine, day: date) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(f'DROP TABLE IF EXISTS "{_name(day)}"'))


async def test_a_fractional_retention_is_not_rounded_to_whole_days(engine: AsyncEngine) -> None:
    """``--older-than 0.5`` means 12 hours (it was truncated to 0 days: everything)."""
    agg = f"part{uuid7().hex[-10:]}"
    now = datetime.now(UTC)
    await PostgresOutboxStore(engine).purge_archive(older_than_days=7)  # yesterday's day exists
    async with engine.begin() as conn:
        await conn.execute(
            text("SELECT relaybus_archive_partitions(:f, :l)"),
            {"f": (now - timedelta(hours=13)).date(), "l": now.date()},
        )
    for hours in (13, 11):
        await _archive(engine, agg, now - timedelta(hours=hours), json.dumps({"h": hours}))
    try:
        proc = run_cli("outbox", "purge", "--older-than", "0.5", "--yes", "--json")
        assert proc.returncode == 0, proc.stderr
        async with engine.connect() as conn:
            left = await conn.execute(
                text("SELECT payload->>'h' FROM outbox_archive WHERE aggregatetype = :a"),
                {"a": agg},
            )
            assert list(left.scalars()) == ["11"]
    finally:
        await delete_archived(engine, agg)
