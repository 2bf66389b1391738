"""Replays and redrives start a new trace linked to the original message's, read back
from Jaeger: ``relaybus dlq replay`` (Kafka and RabbitMQ) and ``relaybus replay
--to-topic --reprocess``; the replay span names its audit row."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.consumers.dlq_admin import KafkaDeadLetters, RabbitDeadLetters, collect
from relaybus.settings import Settings
from relaybus.tracing.jaeger_query import JaegerQuery, TraceView
from tests.support.cli import run_cli
from tests.support.consumer_apps import Switches, make_app
from tests.support.consumerdata import effect_count, effects, event, running, send, unique
from tests.support.poll import eventually
from tests.support.traces import flush, spans_named, stories_of

pytestmark = pytest.mark.usefixtures("effects_table", "traced_here")


def _context() -> tuple[str, str]:
    """A fresh W3C context (trace id, traceparent) as a traced producer would send."""
    trace_id = uuid.uuid4().hex
    return trace_id, f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"


async def _audit_id(engine: AsyncEngine, action: str, target: str) -> int:
    async with engine.connect() as conn:
        found = await conn.scalar(
            text("SELECT max(id) FROM audit_log WHERE action = :a AND target LIKE :t"),
            {"a": action, "t": f"%{target}%"},
        )
    assert found is not None, f"no {action} audit row for {target}"
    return int(found)


@pytest.mark.parametrize("broker", ["kafka", "rabbitmq"])
async def test_a_dead_letter_replayed_is_a_new_trace_linked_to_the_original(
    broker: str,
    settings: Settings,
    engine: AsyncEngine,
    traced_env: dict[str, str],
    query: JaegerQuery,
) -> None:
    name = unique("traced-dead")
    source = f"t.{name}" if broker == "kafka" else f"q.{name}"
    route = source if broker == "kafka" else f"rk.{name}"
    binding = {"binding": route} if broker == "rabbitmq" else {}
    switches = Switches()
    app = make_app(name, switches=switches, broker=broker, topic_or_queue=source, **binding)  # type: ignore[arg-type]
    original_trace, traceparent = _context()
    sent = event("k", {"n": 1, "fail": "until-fixed"})
    sent.headers["traceparent"] = traceparent
    store = (
        KafkaDeadLetters(settings.kafka_bootstrap)
        if broker == "kafka"
        else RabbitDeadLetters(settings.rabbitmq, settings.rabbitmq_management)
    )
    async with running(app, settings):
        await send(settings, broker, route, [sent])

        async def dead_lettered() -> bool:
            return len(await collect(store, f"{source}.dlq")) == 1

        await eventually(dead_lettered, within=60, what="dead letter")
        switches.fixed = True
        replayed = await asyncio.to_thread(
            run_cli,
            *("dlq", "replay", f"{source}.dlq", "--broker", broker, "--id", sent.id, "--yes"),
            env=traced_env,
        )
        assert replayed.returncode == 0, replayed.stderr

        async def applied() -> bool:
            return await effect_count(engine, name) == (1, 1)

        await eventually(applied, within=60, what="effect after replay")
    flush()
    audit_id = await _audit_id(engine, "dlq.replay", f"{source}.dlq")

    def both(views: list[TraceView]) -> bool:
        replay = spans_named(views, "dlq.replay")
        applied = [s for _, s in spans_named(views, "process") if s.attributes.get(
            "relaybus.outcome") == "applied"]  # fmt: skip
        return len(replay) == 1 and len(applied) == 1 and len(views) == 2

    views = await stories_of(query, sent.id, both)
    by_id = {v.trace_id: v for v in views}
    # The original trace: the three failed attempts, the last one dead-lettered.
    original = by_id[original_trace]
    outcomes = [s.attributes.get("relaybus.outcome") for s in original.spans]
    assert sorted(o for o in outcomes if o) == ["dead", "retry", "retry"]
    # The replay's own trace: its root is the replay span, linked to the original's
    # context and naming the audit row; the applied delivery is its child.
    (replay_view, replay_span) = spans_named(views, "dlq.replay")[0]
    assert replay_view.trace_id != original_trace
    assert replay_span.parent_id is None
    assert [link.trace_id for link in replay_span.links] == [original_trace]
    assert replay_span.attributes["relaybus.audit.id"] == str(audit_id)
    (process,) = [s for s in replay_view.spans if s.name.startswith("process")]
    assert process.parent_id == replay_span.span_id
    assert process.attributes["relaybus.outcome"] == "applied"


async def test_a_reprocessed_copy_is_a_new_trace_linked_to_the_original(
    settings: Settings,
    engine: AsyncEngine,
    traced_env: dict[str, str],
    query: JaegerQuery,
) -> None:
    name = unique("traced-copy")
    source = f"t.{name}"
    app = make_app(name, broker="kafka", topic_or_queue=source)
    contexts = [_context() for _ in range(3)]
    records = []
    for n, (_, traceparent) in enumerate(contexts):
        record = event(f"k{n}", {"n": n})
        record.headers["traceparent"] = traceparent
        records.append(record)
    async with running(app, settings):
        await send(settings, "kafka", source, records)

        async def first_pass() -> bool:
            return await effect_count(engine, name) == (3, 3)

        await eventually(first_pass, within=60, what="three effects")
        copied = await asyncio.to_thread(
            run_cli,
            *("replay", source, "--since", "1h", "--to-topic", source, "--reprocess", "--yes"),
            env=traced_env,
        )
        assert copied.returncode == 0, copied.stderr

        async def second_pass() -> bool:
            return await effect_count(engine, name) == (6, 6)

        await eventually(second_pass, within=60, what="three more effects (new ids)")
    flush()
    audit_id = await _audit_id(engine, "replay.reprocess", source)
    originals = {r.id: trace for (trace, _), r in zip(contexts, records, strict=True)}
    copies = [
        str(row["message_id"])
        for row in await effects(engine, name)
        if str(row["message_id"]) not in originals
    ]
    assert len(copies) == 3
    linked_to: set[str] = set()
    for copy_id in copies:
        (view,) = await stories_of(
            query, copy_id, lambda v: len(spans_named(v, "process")) == 1 and len(v) == 1
        )
        root = view.spans[0]
        assert root.name.startswith("replay.reprocess")
        assert root.parent_id is None
        assert root.attributes["relaybus.audit.id"] == str(audit_id)
        (link,) = root.links
        linked_to.add(link.trace_id)
        (process,) = [s for s in view.spans if s.name.startswith("process")]
        assert process.parent_id == root.span_id
    # Each copy's trace links to its own original's.
    assert linked_to == set(originals.values())
