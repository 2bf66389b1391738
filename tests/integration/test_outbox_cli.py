"""The operator CLI on the real database: publish, status, purge, confirmations, audit."""

from __future__ import annotations

import json
import time

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.brokers.stalls import Stall
from relaybus.ids import uuid7
from relaybus.outbox.admin import OutboxAdmin
from relaybus.outbox.store import PostgresOutboxStore
from tests.support.cli import run_cli
from tests.support.outboxdata import delete_archived
from tests.support.poll import eventually


async def test_publish_writes_count_rows_through_the_outbox(engine: AsyncEngine) -> None:
    agg = f"cli{uuid7().hex[-10:]}"
    proc = run_cli(
        "publish",
        "cli.tested",
        "--aggregate-type",
        agg,
        "--key",
        "k-{i}",
        "--data",
        '{"v": 1}',
        "--count",
        "5",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    ids = json.loads(proc.stdout)["ids"]
    assert len(ids) == 5
    async with engine.begin() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT aggregateid, payload FROM outbox WHERE aggregatetype = :a "
                    "ORDER BY sequence"
                ),
                {"a": agg},
            )
        ).all()
        await conn.execute(text("DELETE FROM outbox WHERE aggregatetype = :a"), {"a": agg})
    assert [r.aggregateid for r in rows] == [f"k-{i}" for i in range(5)]
    assert all(r.payload == {"v": 1} for r in rows)


def test_publish_rejects_bad_json_with_a_clear_message() -> None:
    proc = run_cli("publish", "x.y", "--aggregate-type", "a", "--key", "k", "--data", "{nope")
    assert proc.returncode == 2
    assert "--data is not valid JSON" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_status_json_has_counts() -> None:
    proc = run_cli("outbox", "status", "--json")
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert {"pending", "failed", "oldest_pending_age_s", "archived"} <= set(status)


async def test_status_counts_unpublished_exactly_and_estimates_published(
    engine: AsyncEngine,
) -> None:
    """Skipped rows are counted exactly; the published count (an estimate, so that
    status costs the same at any archive size) follows the real count."""
    agg = f"stat{uuid7().hex[-10:]}"
    insert = text(
        "INSERT INTO outbox_archive (id, aggregatetype, aggregateid, type, payload, "
        "timestamp, headers, partition, sequence, attempts, outcome) "
        "SELECT gen_random_uuid(), :a, 'k', 't', '{}', now(), '{}', 0, g, 1, :outcome "
        "FROM generate_series(1, :n) AS g"
    )

    def status() -> dict[str, object]:
        proc = run_cli("outbox", "status", "--json")
        assert proc.returncode == 0, proc.stderr
        found: dict[str, object] = json.loads(proc.stdout)
        return found

    inserted = text(
        "SELECT coalesce(sum(s.n_tup_ins), 0) FROM pg_partition_tree('outbox_archive') t "
        "JOIN pg_stat_user_tables s ON s.relid = t.relid WHERE t.isleaf"
    )

    async def inserts_counted() -> int:
        async with engine.connect() as conn:
            return int((await conn.execute(inserted)).scalar_one())

    before = status()["archived"]
    assert isinstance(before, dict)
    inserts_before = await inserts_counted()
    try:
        async with engine.begin() as conn:
            await conn.execute(insert, {"a": agg, "outcome": "published", "n": 2000})
            await conn.execute(insert, {"a": agg, "outcome": "skipped", "n": 3})
            # Report this backend's counters as soon as it is idle (else up to 10 s).
            await conn.execute(text("SELECT pg_stat_force_next_flush()"))
        after = status()
        archived = after["archived"]
        assert isinstance(archived, dict)
        assert archived.get("skipped", 0) == before.get("skipped", 0) + 3
        assert after["archived_estimated"] == ["published"]

        # The estimate is the statistics' live-row count, kept near the truth by
        # autovacuum's ANALYZE on its own schedule; the test runs that ANALYZE itself,
        # but only once the inserting backend has reported its counters: a report
        # arriving after an ANALYZE counts the same rows twice (an ANALYZE sets the
        # live count, the late report then adds the inserts again), which on a busy
        # machine left the estimate off by the whole batch.
        async def reported() -> bool:
            return await inserts_counted() >= inserts_before + 2003

        await eventually(reported, within=30, what="the inserts in the statistics")
        async with engine.connect() as conn:
            await conn.execute(text("ANALYZE outbox_archive"))

        async def estimate_follows() -> bool:
            async with engine.connect() as conn:
                exact = (
                    await conn.execute(
                        text("SELECT count(*) FROM outbox_archive WHERE outcome = 'published'")
                    )
                ).scalar_one()
            published = status()["archived"]
            assert isinstance(published, dict)
            seen.append((int(published["published"]), exact))
            return exact >= 2000 and abs(int(published["published"]) - exact) <= exact * 0.1

        seen: list[tuple[int, int]] = []
        try:
            await eventually(estimate_follows, within=60, what="published estimate within 10 %")
        except AssertionError as err:
            raise AssertionError(f"{err}; (estimate, exact) last seen: {seen[-3:]}") from None
    finally:
        await delete_archived(engine, agg)


async def test_status_reads_the_archive_through_its_index_never_the_whole_table(
    engine: AsyncEngine,
) -> None:
    """Freshly filled and not yet analyzed (when the planner would rather scan the
    whole table), the archive is still read through ix_outbox_archive_unpublished."""
    agg = f"scan{uuid7().hex[-10:]}"
    # The archive is partitioned by day: its scans are its partitions' scans, and the
    # partial index's are those of the index's partitions.
    scans = text(
        "SELECT (SELECT coalesce(sum(s.seq_scan), 0) FROM pg_partition_tree('outbox_archive') t"
        "          JOIN pg_stat_user_tables s ON s.relid = t.relid) AS seq_scan,"
        "       (SELECT coalesce(sum(s.idx_scan), 0)"
        "          FROM pg_partition_tree('ix_outbox_archive_unpublished') t"
        "          JOIN pg_stat_user_indexes s ON s.indexrelid = t.relid) AS idx_scan"
    )

    async def counters() -> tuple[int, int]:
        async with engine.connect() as conn:
            row = (await conn.execute(scans)).one()
            return int(row.seq_scan), int(row.idx_scan)

    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO outbox_archive (id, aggregatetype, aggregateid, type, payload, "
                    "timestamp, headers, partition, sequence, attempts, outcome) "
                    "SELECT gen_random_uuid(), :a, 'k', 't', '{}', now(), '{}', 0, g, 1, "
                    "'published' FROM generate_series(1, 20000) AS g"
                ),
                {"a": agg},
            )
        seq_before, idx_before = await counters()
        await OutboxAdmin(engine).status()  # its session reports its counts once idle

        async def index_used() -> bool:
            return (await counters())[1] > idx_before

        await eventually(index_used, within=30, what="the partial index read")
        assert (await counters())[0] == seq_before
    finally:
        await delete_archived(engine, agg)


async def test_destructive_actions_ask_and_without_yes_change_nothing(
    engine: AsyncEngine,
) -> None:
    async with engine.connect() as conn:
        before = (await conn.execute(text("SELECT count(*) FROM audit_log"))).scalar_one()
    proc = run_cli("outbox", "purge", "--older-than", "0")  # no --yes, no stdin to answer
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    async with engine.connect() as conn:
        after = (await conn.execute(text("SELECT count(*) FROM audit_log"))).scalar_one()
    assert after == before


async def test_purge_removes_old_archive_rows_and_is_audited(engine: AsyncEngine) -> None:
    agg = f"purge{uuid7().hex[-10:]}"
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO outbox_archive (id, aggregatetype, aggregateid, type, payload, "
                "timestamp, headers, partition, sequence, attempts, outcome, archived_at) "
                "VALUES (gen_random_uuid(), :a, 'k', 't', '{}', now(), '{}', 0, 1, 1, "
                "'published', now() - interval '30 days')"
            ),
            {"a": agg},
        )
    proc = run_cli("outbox", "purge", "--older-than", "7", "--yes", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["purged"] >= 1
    async with engine.connect() as conn:
        left = (
            await conn.execute(
                text("SELECT count(*) FROM outbox_archive WHERE aggregatetype = :a"), {"a": agg}
            )
        ).scalar_one()
        audit = (
            await conn.execute(
                text(
                    "SELECT detail FROM audit_log WHERE action = 'outbox.purge' "
                    "ORDER BY id DESC LIMIT 1"
                )
            )
        ).scalar_one()
    assert left == 0
    assert audit["older_than_days"] == 7


def test_show_unknown_id_is_a_clear_error() -> None:
    proc = run_cli("outbox", "show", str(uuid7()))
    assert proc.returncode == 1
    assert "no row with id" in proc.stdout + proc.stderr


async def test_status_shows_what_a_relay_reports_stalled(engine: AsyncEngine) -> None:
    """What a relay records in ``outbox_stalls`` (``record_stalls``, every tick while
    a Kafka partition does not acknowledge) is listed and warned about, markup and
    all shown as text; clearing it removes it."""
    store = PostgresOutboxStore(engine)
    instance = f"relay-{uuid7().hex[-8:]}"
    leader = "node 2 at [red]127.0.0.1:29092"  # markup must print as text
    stall = Stall("kafka", "outbox.event.orders[3]", leader, time.time() - 12, 7)
    await store.record_stalls(instance, [stall])
    try:
        proc = run_cli("outbox", "status", "--json")
        assert proc.returncode == 0, proc.stderr
        mine = [s for s in json.loads(proc.stdout)["stalls"] if s["instance"] == instance]
        assert [(s["destination"], s["waiting"]) for s in mine] == [("outbox.event.orders[3]", 7)]
        assert mine[0]["seconds"] >= 11
        assert "outbox.event.orders[3] has not acknowledged" in proc.stderr
        assert leader in proc.stderr
        table = run_cli("outbox", "status")
        assert "stalled destinations" in table.stdout
        assert "[red]" in table.stdout  # printed, not interpreted
    finally:
        await store.record_stalls(instance, [])
    after = run_cli("outbox", "status", "--json")
    assert instance not in after.stdout
