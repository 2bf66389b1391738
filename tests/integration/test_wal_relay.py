"""``relaybus relay --source wal`` against real PostgreSQL (a logical replication
slot) and Kafka: the same messages as the polling relay, at-least-once across
kill -9, a standby taking over, and the slot never confirmed ahead of the broker."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections import Counter, defaultdict
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.brokers.kafka import KafkaPublisher, prefixed_topic
from relaybus.brokers.publisher import Outcome, PublishError
from relaybus.db import session_factory
from relaybus.ids import uuid7
from relaybus.locks.postgres import PostgresLock
from relaybus.message import Message
from relaybus.outbox.metrics import RelayMetrics
from relaybus.outbox.routed import RoutedPublisher
from relaybus.outbox.routing import Route, Router
from relaybus.outbox.wal_relay import WalRelay, WalRelayConfig
from relaybus.outbox.wal_store import WalRelayStore
from relaybus.outbox.wal_stream import WalStream, libpq_dsn
from relaybus.outbox.writer import Outbox
from relaybus.settings import Settings
from tests.support.cli import run_cli
from tests.support.outboxdata import Event, Record, enqueue, pending, read_topic, row_states
from tests.support.poll import eventually
from tests.support.relayproc import relay_fleet
from tests.support.walslot import scratch_slot, slot_state, wait_active

KAFKA_ONLY = [{"pattern": "*", "brokers": ["kafka"]}]
TRACEPARENT = "00-" + "c" * 32 + "-" + "d" * 16 + "-01"


def _agg() -> str:
    return f"w{uuid7().hex[-12:]}"


def _wal_env(slot: str, prefix: str = "outbox.event.", **extra: str) -> dict[str, str]:
    return {
        "RELAYBUS_RELAY_SOURCE": "wal",
        "RELAYBUS_RELAY_WAL_SLOT": slot,
        "RELAYBUS_KAFKA_TOPIC_PREFIX": prefix,
        **extra,
    }


def _by_id(records: list[Record]) -> dict[str, list[Record]]:
    out: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        out[r.headers["id"]].append(r)
    return out


def _in_key_order(records: list[Record]) -> dict[str, list[int]]:
    by_key: dict[str, list[int]] = defaultdict(list)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        by_key[r.key].append(json.loads(r.value)["n"])
    return by_key


async def _write_with_headers(engine: AsyncEngine, agg: str, n: int, keys: int) -> list[uuid.UUID]:
    """``n`` events over ``keys`` keys, 50 per transaction; every other one with
    tracing headers and a custom header."""
    outbox = Outbox()
    sessions = session_factory(engine)
    ids: list[uuid.UUID] = []
    for start in range(0, n, 50):
        async with sessions() as session, session.begin():
            for i in range(start, min(n, start + 50)):
                headers = (
                    {"traceparent": TRACEPARENT, "correlation_id": f"c-{i}", "tenant": "<b>x</b>"}
                    if i % 2
                    else None
                )
                ids.append(
                    await outbox.enqueue(
                        session,
                        aggregate_type=agg,
                        aggregate_id=f"k{i % keys}",
                        type="order.created" if i % 3 else "order.paid",
                        payload={"n": i, "note": "ünïcode \u2028 <script>", "nested": {"a": [1]}},
                        headers=headers,
                    )
                )
    return ids


async def test_wal_relay_publishes_what_the_polling_relay_publishes(
    settings: Settings, engine: AsyncEngine, tmp_path: Path
) -> None:
    """Same rows, both relays, separate topics: per message the same key, payload and
    headers, each key in commit order; the WAL relay leaves the table to the poller
    here (delete off), then the poller drains it."""
    agg = _agg()
    async with scratch_slot(engine) as slot:
        with relay_fleet(
            tmp_path,
            KAFKA_ONLY,
            **_wal_env(slot, "wal.outbox.event.", RELAYBUS_RELAY_WAL_DELETE_PUBLISHED="false"),
        ) as fleet:
            fleet.start("wal-1")
            await wait_active(engine, slot)
            ids = await _write_with_headers(engine, agg, 1000, keys=20)

            async def all_on_wal_topic() -> bool:
                return (
                    len(await read_topic(settings.kafka_bootstrap, f"wal.outbox.event.{agg}"))
                    >= 1000
                )

            await eventually(all_on_wal_topic, within=180, what="1000 events via the WAL relay")
        assert await pending(engine, agg) == 1000  # delete off: the rows are still there
        with relay_fleet(
            tmp_path, KAFKA_ONLY, RELAYBUS_KAFKA_TOPIC_PREFIX="poll.outbox.event."
        ) as polls:
            polls.start("poll-1")

            async def drained() -> bool:
                return await pending(engine, agg) == 0

            await eventually(drained, within=60, what="the polling relay drained the rows")
    wal = await read_topic(settings.kafka_bootstrap, f"wal.outbox.event.{agg}")
    poll = await read_topic(settings.kafka_bootstrap, f"poll.outbox.event.{agg}")
    wal_by_id, poll_by_id = _by_id(wal), _by_id(poll)
    assert set(wal_by_id) == set(poll_by_id) == {str(i) for i in ids}
    for message_id, (w, *_) in wal_by_id.items():
        p = poll_by_id[message_id][0]
        assert (w.key, w.value, w.headers) == (p.key, p.value, p.headers), message_id
    tenants = Counter(r.headers.get("tenant") for r in wal)
    assert tenants == {"<b>x</b>": 500, None: 500}  # markup in a header value, verbatim
    expected = defaultdict(list)
    for i in range(1000):
        expected[f"k{i % 20}"].append(i)
    assert _in_key_order(wal) == expected
    assert _in_key_order(poll) == expected


async def test_wal_relay_deletes_what_it_published_and_writer_side_delete_leaves_nothing(
    settings: Settings, engine: AsyncEngine, tmp_path: Path
) -> None:
    """Default mode: the relay deletes the rows it published. Delete-on-write mode:
    the writer's row never outlives its transaction, yet the WAL relay publishes it."""
    agg = _agg()
    async with scratch_slot(engine) as slot:
        with relay_fleet(tmp_path, KAFKA_ONLY, **_wal_env(slot)) as fleet:
            fleet.start("wal-1")
            await wait_active(engine, slot)
            await enqueue(
                engine, agg, [Event(f"k{i % 5}", "t.created", {"n": i}) for i in range(300)]
            )
            outbox = Outbox(delete_on_write=True)
            async with session_factory(engine)() as session, session.begin():
                for i in range(300, 400):
                    await outbox.enqueue(
                        session,
                        aggregate_type=agg,
                        aggregate_id=f"k{i % 5}",
                        type="t.created",
                        payload={"n": i},
                    )
            async with engine.connect() as conn:
                left = (
                    await conn.execute(
                        text(
                            "SELECT count(*) FROM outbox WHERE aggregatetype = :a "
                            "AND (payload->>'n')::int >= 300"
                        ),
                        {"a": agg},
                    )
                ).scalar_one()
            assert left == 0  # delete-on-write: never in the table after commit

            async def published_and_cleaned() -> bool:
                records = await read_topic(settings.kafka_bootstrap, f"outbox.event.{agg}")
                return len(records) >= 400 and await pending(engine, agg) == 0

            await eventually(published_and_cleaned, within=180, what="400 published, table empty")
    records = await read_topic(settings.kafka_bootstrap, f"outbox.event.{agg}")
    assert sorted(json.loads(r.value)["n"] for r in records) == list(range(400))


async def test_kill_9_of_the_active_wal_relay_loses_nothing_and_the_standby_takes_over(
    settings: Settings, engine: AsyncEngine, tmp_path: Path
) -> None:
    agg = _agg()
    async with scratch_slot(engine) as slot:
        with relay_fleet(tmp_path, KAFKA_ONLY, **_wal_env(slot)) as fleet:
            first = fleet.start("wal-a")
            await wait_active(engine, slot)
            standby = fleet.start("wal-b")
            events = [Event(f"k{i % 16}", "t.created", {"n": i}) for i in range(4000)]
            writing = asyncio.create_task(enqueue(engine, agg, events, chunk=20))

            async def some_published() -> bool:
                return len(await read_topic(settings.kafka_bootstrap, f"outbox.event.{agg}")) >= 500

            await eventually(some_published, within=180, what="first 500 published")
            first.signal(signal.SIGKILL)
            ids = await writing

            async def all_published() -> bool:
                seen = {
                    r.headers["id"]
                    for r in await read_topic(settings.kafka_bootstrap, f"outbox.event.{agg}")
                }
                return seen >= {str(i) for i in ids}

            await eventually(all_published, within=180, what="all 4000 published after the kill")
            assert standby.proc is not None
            assert standby.proc.poll() is None
            first.start()  # the old active comes back as a standby
            await eventually(
                lambda: _slot_confirmed_past(engine, slot), within=90, what="slot confirmed"
            )
    records = await read_topic(settings.kafka_bootstrap, f"outbox.event.{agg}")
    counts = Counter(r.headers["id"] for r in records)
    assert set(counts) == {str(i) for i in ids}  # 0 lost, nothing unexpected
    order = _in_key_order(records)
    for key, ns in order.items():
        firsts = list(dict.fromkeys(ns))  # replays repeat a suffix; first sightings keep order
        assert firsts == sorted(firsts), key
    print(f"duplicates after kill -9: {sum(counts.values()) - len(counts)}")


async def _slot_confirmed_past(engine: AsyncEngine, slot: str) -> bool:
    state = await slot_state(engine, slot)
    return state is not None and state[1] > 0


class _AckThenDrop:
    """A real Kafka publisher whose connection 'dies' once between publishing and
    the acknowledgement reaching the relay: the records are on the broker, the relay
    sees a ``PublishError``. Records every id whose acknowledgement the relay saw."""

    name = "kafka"

    def __init__(self, inner: KafkaPublisher, drop_on_call: int) -> None:
        self.inner = inner
        self.calls = 0
        self.drop_on_call = drop_on_call
        self.acked: set[uuid.UUID] = set()

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        await self.inner.stop()

    async def publish(self, messages: list[Message]) -> list[Outcome]:
        self.calls += 1
        outcomes = await self.inner.publish(messages)
        if self.calls == self.drop_on_call:
            raise PublishError("connection to the broker lost before the acknowledgement")
        self.acked.update(m.id for m, o in zip(messages, outcomes, strict=True) if o.ok)
        return outcomes


class _CheckedStream(WalStream):
    """The real stream; every confirmation is checked against the acknowledgements."""

    def __init__(
        self,
        *args: object,
        publisher: _AckThenDrop,
        commits: dict[int, set[uuid.UUID]],
        **kw: object,
    ) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.publisher = publisher
        self.commits = commits
        self.violations: list[str] = []

    def confirm(self, lsn: int) -> None:
        unacked = {
            i for end, ids in self.commits.items() if end <= lsn for i in ids
        } - self.publisher.acked
        if unacked:
            self.violations.append(f"confirmed {lsn} with {len(unacked)} rows unacknowledged")
        super().confirm(lsn)


async def test_slot_is_never_confirmed_ahead_of_the_broker_acknowledgements(
    settings: Settings, engine: AsyncEngine
) -> None:
    """The broker connection drops between publish and acknowledgement: the slot's
    confirmed LSN stays behind that batch, the batch is sent again, and every
    confirmation covers only acknowledged rows (checked at each confirm, and on the
    server's ``confirmed_flush_lsn``)."""
    agg = _agg()
    async with scratch_slot(engine) as slot:
        publisher = _AckThenDrop(
            KafkaPublisher(settings.kafka_bootstrap, prefixed_topic("outbox.event.")),
            drop_on_call=2,
        )
        commits: dict[int, set[uuid.UUID]] = {}
        streams: list[_CheckedStream] = []
        dsn = libpq_dsn(settings.database_url)

        def stream() -> WalStream:
            # A 4 KiB buffer: reading pauses and resumes all the time (back-pressure).
            s = _CheckedStream(
                dsn,
                slot,
                "relaybus_outbox",
                publisher=publisher,
                commits=commits,
                max_buffer_bytes=4096,
            )
            streams.append(s)
            return s

        router = Router([Route(pattern="*", brokers=["kafka"])])
        metrics = RelayMetrics()
        store = WalRelayStore(engine)
        await store.ensure_publication("relaybus_outbox")
        relay = WalRelay(
            stream,
            store,
            PostgresLock(engine),
            RoutedPublisher({"kafka": publisher}, router, metrics),  # type: ignore[dict-item]
            WalRelayConfig(
                slot=slot, batch_size=50, lease_ttl=3, backoff_initial=0.05, instance="checked"
            ),
            metrics,
        )
        stop = asyncio.Event()
        running = asyncio.create_task(relay.run(stop))
        try:
            await wait_active(engine, slot)
            ids: list[uuid.UUID] = []
            for chunk in range(10):  # 10 transactions of 50, each one commit LSN
                got = await enqueue(
                    engine,
                    agg,
                    [
                        Event(f"k{i % 4}", "t.c", {"n": i})
                        for i in range(chunk * 50, chunk * 50 + 50)
                    ],
                    chunk=50,
                )
                ids += got
                async with engine.connect() as conn:
                    end = (
                        await conn.execute(
                            text("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn")
                        )
                    ).scalar_one()
                commits[int(end)] = set(got)

            async def all_acked() -> bool:
                return publisher.acked >= set(ids)

            await eventually(all_acked, within=180, what="every row acknowledged")
            server_confirmed = (await slot_state(engine, slot) or (False, 0))[1]
        finally:
            stop.set()
            await running
    assert publisher.calls > 2  # the dropped batch was sent again
    assert [v for s in streams for v in s.violations] == []
    unacked_before_server_lsn = {
        i for end, got in commits.items() if end <= server_confirmed for i in got
    } - publisher.acked
    assert unacked_before_server_lsn == set()
    records = await read_topic(settings.kafka_bootstrap, f"outbox.event.{agg}")
    counts = Counter(r.headers["id"] for r in records)
    assert set(counts) == {str(i) for i in ids}
    assert sum(counts.values()) > len(counts)  # the dropped batch reached Kafka twice


async def test_rows_written_around_the_outbox_are_failed_and_retry_republishes_them(
    settings: Settings, engine: AsyncEngine, tmp_path: Path
) -> None:
    """Rows a foreign client (plain SQL, as psql) wrote that cannot be published, and one
    the broker refuses (over its request size), are kept as failed rows with the reason;
    the rows around them flow; after a fix, ``outbox retry`` re-inserts one and the WAL
    relay publishes it. ``outbox status`` shows the slot streamed, then idle and stale."""
    agg = _agg()
    topic = f"outbox.event.{agg}"
    deep = "[" * 200 + "]" * 200
    rows = [
        (f"{agg}-k1", '{"n": 1, "html": "<script>alert(1)</script>"}', "{}", None),
        (f"{agg}-k2", '{"n": 2}', '{"x-dlq-reason": "forged"}', "reserved"),
        (f"{agg}-k3", '{"n": 3}', '["not", "an", "object"]', "JSON object"),
        (f"{agg}-k4", '{"n": 4, "big": "' + "x" * 8000 + '"}', "{}", "over max_request_size"),
        (f"{agg}-k5", '{"n": 5, "deep": ' + deep + "}", "{}", None),
        (f"{agg}-k6", '{"n": 6}', '{"tenant": "<b>t</b>"}', None),
    ]
    ids = [uuid7() for _ in rows]
    async with scratch_slot(engine) as slot:
        env = _wal_env(slot, RELAYBUS_KAFKA_MAX_REQUEST_SIZE="4096")
        with relay_fleet(tmp_path, KAFKA_ONLY, **env) as fleet:
            fleet.start("wal-1")
            await wait_active(engine, slot)
            async with engine.begin() as conn:
                for message_id, (key, payload, headers, _) in zip(ids, rows, strict=True):
                    await conn.execute(
                        text(
                            "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload, "
                            "headers, partition) VALUES (:id, :agg, :key, 'ok', "
                            "CAST(:payload AS jsonb), CAST(:headers AS jsonb), 0)"
                        ),
                        {
                            "id": message_id,
                            "agg": agg,
                            "key": key,
                            "payload": payload,
                            "headers": headers,
                        },
                    )

            async def settled() -> bool:
                published = len(await read_topic(settings.kafka_bootstrap, topic))
                async with engine.connect() as conn:
                    left = (
                        await conn.execute(
                            text(
                                "SELECT count(*) FILTER (WHERE status = 'failed'), "
                                "count(*) FILTER (WHERE status = 'pending') "
                                "FROM outbox WHERE aggregatetype = :a"
                            ),
                            {"a": agg},
                        )
                    ).one()
                # published rows are deleted by the relay's clean-up (once a second)
                return published == 3 and tuple(left) == (3, 0)

            await eventually(settled, within=180, what="3 published and cleaned, 3 kept as failed")
            state = await row_states(engine, agg)
            for message_id, (*_, reason) in zip(ids, rows, strict=True):
                if reason is None:
                    assert message_id not in state  # published, then deleted
                else:
                    assert state[message_id][0] == "failed"
                    assert reason in state[message_id][1], state[message_id]

            status = run_cli("outbox", "status", "--json")
            slots = {s["slot_name"]: s for s in json.loads(status.stdout)["slots"]}
            assert slots[slot]["active"] is True

            # The operator fixes the forged row and retries it: published once more.
            async with engine.begin() as conn:
                await conn.execute(
                    text("UPDATE outbox SET headers = '{}' WHERE id = :id"), {"id": ids[1]}
                )
            retried = run_cli("outbox", "retry", str(ids[1]), "--yes")
            assert retried.returncode == 0, retried.stdout + retried.stderr

            async def republished() -> bool:
                records = await read_topic(settings.kafka_bootstrap, topic)
                return str(ids[1]) in {r.headers["id"] for r in records}

            await eventually(republished, within=180, what="the retried row published")
        stale = run_cli(
            "outbox", "status", "--json", env={"RELAYBUS_OUTBOX_SLOT_STALE_AFTER": "0.001"}
        )
        slots = {s["slot_name"]: s for s in json.loads(stale.stdout)["slots"]}
        assert slots[slot]["active"] is False
        assert slots[slot]["idle_seconds"] is not None  # known: the relay recorded progress
        assert slots[slot]["stale"] is True
        assert f"replication slot {slot} has had no consumer" in stale.stderr
    records = await read_topic(settings.kafka_bootstrap, topic)
    by_id = {r.headers["id"]: r for r in records}
    assert json.loads(by_id[str(ids[0])].value)["html"] == "<script>alert(1)</script>"
    assert by_id[str(ids[5])].headers["tenant"] == "<b>t</b>"
    await _remove_rows(engine, agg)


async def _remove_rows(engine: AsyncEngine, agg: str) -> None:
    """Rows a test leaves on purpose (failed, or never published): gone afterwards, so
    no later relay holds back their keys or publishes them."""
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM outbox WHERE aggregatetype = :a"), {"a": agg})


async def test_a_stop_during_a_broker_outage_ends_promptly_and_confirms_nothing_unsent(
    settings: Settings, engine: AsyncEngine
) -> None:
    """Kafka unreachable (nothing listens on its port): the relay keeps retrying the
    same batch; SIGTERM (here: ``stop``) ends it within the backoff wait, and the slot
    is still confirmed before the unsent rows, so the next relay publishes them."""
    agg = _agg()
    async with scratch_slot(engine) as slot:
        router = Router([Route(pattern="*", brokers=["kafka"])])
        metrics = RelayMetrics()
        dsn = libpq_dsn(settings.database_url)
        relay = WalRelay(
            lambda: WalStream(dsn, slot, "relaybus_outbox"),
            WalRelayStore(engine),
            PostgresLock(engine),
            RoutedPublisher(
                {"kafka": KafkaPublisher("127.0.0.1:1", request_timeout_ms=1000)}, router, metrics
            ),
            WalRelayConfig(slot=slot, lease_ttl=3, backoff_initial=0.05, backoff_max=30),
            metrics,
        )
        stop = asyncio.Event()
        running = asyncio.create_task(relay.run(stop))
        await wait_active(engine, slot)
        before = (await slot_state(engine, slot) or (False, 0))[1]
        ids = await enqueue(engine, agg, [Event("k1", "t.c", {"n": i}) for i in range(20)])

        async def retried_twice() -> bool:
            return metrics.failures.labels("transient")._value.get() >= 2

        try:  # the slot decodes the whole server's WAL, other runs' too: minutes under CI
            await eventually(retried_twice, within=180, what="two failed publish attempts")
        finally:
            stop.set()  # stopped either way, so the slot can be dropped
        await asyncio.wait_for(running, 35)  # not stuck in the outage's retry loop
        assert (await slot_state(engine, slot) or (False, 0))[1] == before
        assert await pending(engine, agg) == len(ids)  # not cleaned up: never published
    await _remove_rows(engine, agg)


async def test_a_publication_that_lost_its_table_gets_it_back(engine: AsyncEngine) -> None:
    """A dropped and recreated outbox table leaves its publication empty; the relay's
    start puts the table back instead of waiting forever for inserts never sent."""
    name = f"t_pub_{uuid.uuid4().hex[:12]}"
    store = WalRelayStore(engine)

    async def tables() -> list[str]:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT tablename FROM pg_publication_tables WHERE pubname = :n"), {"n": name}
            )
            return [r[0] for r in rows]

    try:
        assert await store.ensure_publication(name) is True  # created
        assert await store.ensure_publication(name) is False  # as it should be
        async with engine.begin() as conn:
            await conn.execute(text(f"ALTER PUBLICATION {name} DROP TABLE outbox"))
        assert await tables() == []
        assert await store.ensure_publication(name) is True  # repaired
        assert await tables() == ["outbox"]
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP PUBLICATION IF EXISTS {name}"))
