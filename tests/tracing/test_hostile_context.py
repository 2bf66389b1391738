"""Hostile ``traceparent``/``tracestate`` values written by kcat (not relaybus) to a
traced worker: malformed, huge, marked up, repeated, not UTF-8, in a compressed batch.
A value that is not a valid context is ignored (the delivery starts a trace of its
own; one merely shaped like an unsampled context is taken at its flags' word, records
nothing, and its value goes nowhere), an over-long ``tracestate`` is dropped, a
repeated or undecodable header is dead-lettered with its reason, and the worker goes
on: nothing crashes, loops or stalls on one record."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus import headers as h
from relaybus.cli.trace import stories
from relaybus.consumers.dlq_admin import KafkaDeadLetters, collect
from relaybus.settings import Settings
from relaybus.tracing.jaeger_query import JaegerQuery, TraceView
from tests.support.consumer_apps import make_app
from tests.support.consumerdata import effect_count, event, running, unique
from tests.support.foreign import kcat_produce
from tests.support.poll import eventually
from tests.support.traces import flush, spans_named, stories_of

pytestmark = pytest.mark.usefixtures("effects_table", "traced_here")

TRACE = uuid.uuid4().hex
VALID = f"00-{TRACE}-{uuid.uuid4().hex[:16]}-01"
UNSAMPLED_SHAPE = "unsampled-shape"

# name -> (extra header pairs, dead-letter reason or None, parent kept?)
CASES: dict[str, tuple[list[tuple[bytes, bytes]], str | None, bool]] = {
    "garbage": ([(b"traceparent", b"garbage")], None, False),
    "huge": ([(b"traceparent", b"00-" + b"a" * 30_000)], None, False),
    "markup": ([(b"traceparent", b"00-<script>alert(1)</script>-x-01")], None, False),
    "upper-case": ([(b"traceparent", VALID.upper().encode())], None, False),
    "zero-ids": ([(b"traceparent", f"00-{'0' * 32}-{'0' * 16}-01".encode())], None, False),
    "huge-tracestate": (
        [(b"traceparent", VALID.encode()), (b"tracestate", b"k=" + b"v" * 20_000)],
        None,
        True,
    ),
    "many-members": (
        [(b"traceparent", VALID.encode()), (b"tracestate", b",".join([b"a=b"] * 500))],
        None,
        True,
    ),
    "repeated": (
        [(b"traceparent", VALID.encode()), (b"traceparent", b"garbage")],
        "duplicate-header",
        False,
    ),
    "not-utf8": ([(b"traceparent", b"\xff\xfe00")], "bad-header", False),
    # 55 characters ending "-00", upper-case: the hot path's shape test passes it.
    UNSAMPLED_SHAPE: (
        [(b"traceparent", f"00-{TRACE.upper()}-{'a' * 16}-00".encode())],
        None,
        False,
    ),
}


async def test_hostile_trace_headers_are_ignored_bounded_or_dead_lettered(
    settings: Settings, engine: AsyncEngine, query: JaegerQuery
) -> None:
    name = unique("traced-hostile")
    topic = f"t.{name}"
    app = make_app(name, broker="kafka", topic_or_queue=topic)
    ids: dict[str, str] = {}
    async with running(app, settings):
        for case, (extra, _reason, _kept) in CASES.items():
            record = event(case, {"n": 1})
            ids[case] = record.id
            envelope = [(k.encode(), v.encode()) for k, v in record.headers.items()]
            kcat_produce(settings.kafka_bootstrap, topic, case.encode(), [record.body],
                         [*envelope, *extra])  # fmt: skip
        # Valid context in a zstd batch, after all of them: the worker is still going.
        last = event("last", {"n": 2})
        ids["compressed"] = last.id
        kcat_produce(
            settings.kafka_bootstrap,
            topic,
            b"last",
            [last.body],
            [*((k.encode(), v.encode()) for k, v in last.headers.items()),
             (b"traceparent", VALID.encode())],
            compression="zstd",
        )  # fmt: skip
        applied = 1 + sum(1 for _, reason, _ in CASES.values() if reason is None)

        async def all_handled() -> bool:
            done = await effect_count(engine, name) == (applied, applied)
            letters = await collect(KafkaDeadLetters(settings.kafka_bootstrap), f"{topic}.dlq")
            return done and len(letters) == len(CASES) + 1 - applied

        await eventually(all_handled, within=90, what="every record applied or dead-lettered")
        letters = await collect(KafkaDeadLetters(settings.kafka_bootstrap), f"{topic}.dlq")
    reasons = {letter.key: letter.headers[h.DLQ_REASON] for letter in letters}
    assert reasons == {c: r for c, (_, r, _) in CASES.items() if r is not None}
    flush()

    for case, (_, reason, kept) in [*CASES.items(), ("compressed", ([], None, True))]:
        if case == UNSAMPLED_SHAPE:
            continue  # recorded nothing: looked for below, once the others are found
        if reason is not None:
            # Refused before any handler: a dead-letter span with the reason.
            def refused(views: list[TraceView], message_id: str = ids[case]) -> bool:
                return any(
                    s.attributes.get("messaging.message.id") == message_id
                    for _, s in spans_named(views, "dead-letter")
                )

            views = await stories_of(query, ids[case], refused)
            (dead,) = [s for _, s in spans_named(views, "dead-letter")
                       if s.attributes["messaging.message.id"] == ids[case]]  # fmt: skip
            assert dead.attributes["relaybus.dlq.reason"] == reason
            assert dead.failed
            continue

        def processed(views: list[TraceView], message_id: str = ids[case]) -> bool:
            return any(
                s.attributes.get("messaging.message.id") == message_id
                for _, s in spans_named(views, "process")
            )

        (view,) = await stories_of(query, ids[case], processed)
        (span,) = [
            s
            for s in view.spans
            if s.name.startswith("process") and s.attributes["messaging.message.id"] == ids[case]
        ]
        assert span.attributes["relaybus.outcome"] == "applied", case
        if kept:
            # The three valid contexts share the trace their sender named.
            assert view.trace_id == TRACE, case
            assert [link.trace_id for link in span.links] == [TRACE], case
        else:
            # Ignored: a trace of its own, no link to anything.
            assert view.trace_id != TRACE, case
            assert span.links == [], case
    # Applied (counted above) and recorded nowhere: every span this process ended was
    # flushed at once and the other cases' spans are all in Jaeger by now.
    shaped = ids[UNSAMPLED_SHAPE]
    spans = [s for view in await stories(query, shaped) for s in view.spans]
    assert [s for s in spans if s.attributes.get("messaging.message.id") == shaped] == []
