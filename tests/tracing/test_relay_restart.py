"""The relay SIGKILLed mid-batch and restarted: every message it or its successor
publishes — a row published twice included — continues the trace its outbox row
stored at the write, because the context lives in the row, not in the relay."""

from __future__ import annotations

import signal
from collections import defaultdict
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.ids import uuid7
from relaybus.settings import Settings
from relaybus.tracing.jaeger_query import JaegerQuery, TraceView
from relaybus.tracing.w3c import parse_traceparent
from tests.support.outboxdata import Event, enqueue, make_topic, pending, read_topic, wait_drained
from tests.support.poll import eventually
from tests.support.relayproc import relay_fleet
from tests.support.traces import flush, spans_named, stories_of

KAFKA_ONLY = [{"pattern": "*", "brokers": ["kafka"]}]


@pytest.mark.usefixtures("traced_here")
async def test_a_relay_killed_mid_batch_and_restarted_continues_each_rows_trace(
    settings: Settings,
    engine: AsyncEngine,
    tmp_path: Path,
    traced_env: dict[str, str],
    query: JaegerQuery,
) -> None:
    agg = f"traced-crash-{uuid7().hex[-8:]}"
    topic = await make_topic(settings.kafka_bootstrap, agg)
    events = [Event(f"k{i % 20}", "crash.tick", {"n": i // 20}) for i in range(4_000)]
    await enqueue(engine, agg, events, chunk=500)  # traced: each write is a span
    flush()
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text("SELECT id, headers->>'traceparent' FROM outbox WHERE aggregatetype = :a"),
                {"a": agg},
            )
        ).all()
    stored = {}
    for row_id, traceparent in rows:
        found = parse_traceparent(traceparent)
        assert found is not None, "every traced write stores its context in its row"
        stored[str(row_id)] = found
    with relay_fleet(tmp_path, KAFKA_ONLY, RELAYBUS_RELAY_BATCH_SIZE="100", **traced_env) as fleet:
        victim = fleet.start("victim")

        async def some_published() -> bool:
            return await pending(engine, agg) < 3_800

        await eventually(some_published, within=60, what="relay started publishing")
        victim.signal(signal.SIGKILL)
        left = await pending(engine, agg)
        assert left > 0, "killed before it finished"
        fleet.start("successor")
        await wait_drained(engine, agg, within=180)

    records = await read_topic(settings.kafka_bootstrap, topic)
    sent: dict[str, list[str]] = defaultdict(list)
    for record in records:
        sent[record.headers["id"]].append(record.headers["traceparent"])
    assert set(sent) == set(stored), "no event lost"
    for message_id, traceparents in sent.items():
        row = stored[message_id]
        for traceparent in traceparents:
            published = parse_traceparent(traceparent)
            assert published is not None
            # The row's trace, a span of its own (the publish span), not the row's.
            assert published.trace_id == row.trace_id
            assert published.span_id != row.span_id
    # A row published by the successor too (its batch was sent but not settled when
    # the victim died): in Jaeger its publish spans are children of its write. (The
    # victim's own spans of its last moments may never have left it: SIGKILL leaves
    # its exporter no time; the records above carry them anyway.)
    twice = [m for m, t in sent.items() if len(t) > 1]
    print(f"\nSIGKILL mid-batch: {left} rows were pending, {len(twice)} published twice")
    # A key's last row comes after the kill (the victim published a few hundred of 4 000
    # rows, each key has 200): the successor surely published it.
    last_of_key = [r.headers["id"] for r in records if r.key == "k0"][-1]
    for message_id in [*twice[:3], last_of_key]:

        def complete(views: list[TraceView]) -> bool:
            writes = spans_named(views, "create")
            return len(spans_named(views, "publish")) >= 1 and len(writes) == 1

        (view,) = await stories_of(query, message_id, complete)
        (write,) = [s for s in view.spans if s.name.startswith("create")]
        publishes = [s for s in view.spans if s.name.startswith("publish")]
        assert view.trace_id == stored[message_id].trace_id
        assert all(p.parent_id == write.span_id for p in publishes)
        # The successor's publish is among them: its context is on the last record.
        last = parse_traceparent(sent[message_id][-1])
        assert last is not None
        assert last.span_id in {p.span_id for p in publishes}
