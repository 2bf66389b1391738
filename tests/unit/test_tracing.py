"""Tracing without services: W3C headers read from the wire, the environment that
turns tracing on, and the spans each layer makes (an in-memory exporter here; the same
spans are read back from Jaeger in tests/e2e/test_tracing.py)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from relaybus import tracing
from relaybus.brokers.memory import InMemoryPublisher
from relaybus.consumers.app import Handler, KafkaSource
from relaybus.consumers.incoming import Incoming, InvalidMessage
from relaybus.consumers.processor import Processor
from relaybus.message import Message
from relaybus.outbox.metrics import RelayMetrics
from relaybus.outbox.routed import RoutedPublisher
from relaybus.outbox.routing import Router
from relaybus.settings import Route
from relaybus.streams.runtime.kafka_loop import trace_decision
from relaybus.streams.runtime.processor import Emit
from relaybus.tracing import otel
from relaybus.tracing.redrive import redriven_headers, redriven_pairs
from relaybus.tracing.w3c import clean_tracestate, parse_traceparent, read_context

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"
PARENT = f"00-{TRACE}-{SPAN}-01"


class Spans:
    def __init__(self, exporter: InMemorySpanExporter, tracer: otel.OtelTracer) -> None:
        self.exporter = exporter
        self.tracer = tracer

    def finished(self) -> list[ReadableSpan]:
        self.tracer.force_flush()
        return list(self.exporter.get_finished_spans())

    def named(self, prefix: str) -> list[ReadableSpan]:
        return [s for s in self.finished() if s.name.startswith(prefix)]


@pytest.fixture
def spans() -> Iterator[Spans]:
    exporter = InMemorySpanExporter()
    tracer = otel.build("unit", {}, exporter=exporter)
    tracing.install(tracer)
    try:
        yield Spans(exporter, tracer)
    finally:
        tracing.install(None)
        tracer.shutdown()


def hex_trace(span: ReadableSpan) -> str:
    return f"{span.context.trace_id:032x}"


# -- W3C trace context from untrusted headers -----------------------------------------


def test_a_valid_traceparent_is_read() -> None:
    found = parse_traceparent(PARENT)
    assert found is not None
    assert (found.trace_id, found.span_id, found.sampled) == (TRACE, SPAN, True)
    assert found.traceparent == PARENT


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        PARENT.upper(),  # the W3C format is lower-case hex
        f"00-{'0' * 32}-{SPAN}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero span id
        f"ff-{TRACE}-{SPAN}-01",  # version ff is invalid; other versions unknown
        f"01-{TRACE}-{SPAN}-01-extra",
        PARENT + " ",
        PARENT + "\x00",
        "00-" + "é" * 32 + f"-{SPAN}-01",
        PARENT * 20_000,  # huge: refused by length before any matching
    ],
)
def test_a_malformed_traceparent_is_ignored(value: str) -> None:
    assert parse_traceparent(value) is None
    assert read_context({"traceparent": value, "tracestate": "a=b"}) is None


def test_tracestate_is_kept_only_within_the_w3c_bounds() -> None:
    assert clean_tracestate("rojo=00f067aa0ba902b7, congo=t61rcWkgMzE") == (
        "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    )
    assert clean_tracestate("a=b," * 33) is None  # more than 32 members
    assert clean_tracestate("k=" + "v" * 600) is None  # over 512 characters
    assert clean_tracestate("UPPER=x") is None
    assert clean_tracestate("a=<b>") == "a=<b>"  # printable: the console escapes it
    assert clean_tracestate("a=b\nc=d") is None
    found = read_context({"traceparent": PARENT, "tracestate": "x" * 10_000})
    assert found is not None
    assert found.tracestate is None


# -- the standard environment turns tracing on ---------------------------------------


@pytest.mark.parametrize(
    ("environ", "why"),
    [
        ({}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"},
         "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318", "OTEL_SDK_DISABLED": "true"}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318", "OTEL_TRACES_EXPORTER": "none"}, None),
    ],
)  # fmt: skip
def test_the_standard_variables_say_whether_tracing_is_on(
    environ: dict[str, str], why: str | None
) -> None:
    assert tracing.wanted(environ) == why


@pytest.mark.parametrize(
    "environ",
    [
        {"OTEL_TRACES_EXPORTER": "zipkin"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "127.0.0.1:4318"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
    ],
)
def test_what_relaybus_cannot_export_is_named_and_leaves_tracing_off(
    environ: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ValueError, match=r"OTEL_|OTLP"):
        tracing.wanted(environ)
    assert tracing.configure("x", environ).enabled is False
    assert "tracing stays off" in caplog.text


def test_the_traces_endpoint_follows_the_specification() -> None:
    assert otel.endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}) == (
        "http://c:4318/v1/traces"
    )
    assert otel.endpoint({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c/t"}) == "http://c/t"


def test_tracing_off_imports_no_opentelemetry() -> None:
    """A process without OTEL_* set runs the relay's and the writer's modules without
    importing any of OpenTelemetry, and the worker's without relaybus's SDK side or an
    exporter (redis-py imports part of the SDK itself for its own metrics when the SDK
    is installed: not ours to stop)."""
    code = (
        "import sys, relaybus.tracing as t, relaybus.outbox.routed, relaybus.outbox.writer, "
        "relaybus.streams.runtime.processor;"
        "assert t.configure('x', {}).enabled is False;"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')));"
        "import relaybus.consumers.processor, relaybus.streams.runtime.kafka_loop;"
        "print(sorted(m for m in sys.modules if m.startswith(('relaybus.tracing.otel', "
        "'opentelemetry.exporter', 'opentelemetry.sdk.trace'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]", "[]"]


# -- the spans of each layer ----------------------------------------------------------


async def test_the_relay_publishes_each_row_as_a_child_of_its_stored_context(
    spans: Spans,
) -> None:
    broker = InMemoryPublisher("kafka")
    routed = RoutedPublisher(
        {"kafka": broker}, Router([Route(pattern="*", brokers=["kafka"])]), RelayMetrics()
    )
    with_context = Message.from_data("order.created", "order", "1", {"n": 1})
    with_context = Message(**{**with_context.__dict__, "traceparent": PARENT})
    without = Message.from_data("order.created", "order", "2", {"n": 2})
    outcomes = await routed.publish([with_context, without])
    assert all(o.ok for o in outcomes)
    first, second = spans.named("publish")
    assert hex_trace(first) == TRACE
    assert first.parent is not None
    assert f"{first.parent.span_id:016x}" == SPAN
    assert first.attributes is not None
    assert first.attributes["relaybus.outcome"] == "published"
    assert first.attributes["messaging.message.id"] == str(with_context.id)
    assert float(str(first.attributes["relaybus.outbox.wait_ms"])) >= 0
    assert hex_trace(second) != TRACE
    assert second.parent is None
    # What the broker got carries the publish span's context, not the row's.
    sent = {m.aggregateid: m.traceparent for m in broker.sent}
    assert sent["1"] == f"00-{TRACE}-{first.context.span_id:016x}-01"
    assert sent["2"] is not None
    assert hex_trace(second) in sent["2"]


async def test_a_refused_publish_is_a_failed_span(spans: Spans) -> None:
    broker = InMemoryPublisher("kafka", refuse=lambda m: "too large")
    routed = RoutedPublisher(
        {"kafka": broker}, Router([Route(pattern="*", brokers=["kafka"])]), RelayMetrics()
    )
    await routed.publish([Message.from_data("t", "a", "1", {})])
    (span,) = spans.named("publish")
    assert span.attributes is not None
    assert span.attributes["relaybus.outcome"] == "refused"
    assert span.status.status_code.name == "ERROR"


def _incoming(headers: dict[str, str], attempt: int = 1) -> Incoming:
    message_id = uuid.uuid4()
    return Incoming(
        id=message_id,
        type="order.created",
        key="1",
        payload={},
        raw=b"{}",
        headers={"id": str(message_id), "type": "order.created", **headers},
        source="outbox.event.order",
        partition=0,
        offset=7,
        attempt=attempt,
    )


async def test_a_delivery_is_processed_in_a_child_span_linked_to_its_publish(
    spans: Spans,
) -> None:
    seen: list[str | None] = []

    async def handle(message: Incoming, _session: object) -> None:
        seen.append(tracing.tracer().current_traceparent())

    handler = Handler("h", handle, KafkaSource("t", "g"), dedupe="none")  # type: ignore[arg-type]
    verdict = await Processor(handler).process(_incoming({"traceparent": PARENT}))
    assert verdict.outcome == "done"
    (span,) = spans.named("process")
    assert hex_trace(span) == TRACE
    assert span.parent is not None
    assert [f"{link.context.span_id:016x}" for link in span.links] == [SPAN]
    assert span.attributes is not None
    assert span.attributes["relaybus.outcome"] == "applied"
    assert span.attributes["messaging.kafka.offset"] == 7
    # The handler ran inside the span: what it writes to its outbox joins the trace.
    assert seen == [f"00-{TRACE}-{span.context.span_id:016x}-01"]


async def test_a_failing_delivery_records_retry_then_dead_letter(spans: Spans) -> None:
    async def fail(message: Incoming, _session: object) -> None:
        raise RuntimeError("boom")

    handler = Handler("h", fail, KafkaSource("t", "g"), dedupe="none")  # type: ignore[arg-type]
    processor = Processor(handler)
    await processor.process(_incoming({"traceparent": PARENT}))
    await processor.process(_incoming({"traceparent": PARENT}, attempt=99))
    retry, dead = spans.named("process")
    assert retry.attributes is not None
    assert retry.attributes["relaybus.outcome"] == "retry"
    assert dead.attributes is not None
    assert dead.attributes["relaybus.outcome"] == "dead"
    assert dead.attributes["relaybus.dlq.reason"] == "max-attempts"
    assert dead.attributes["relaybus.attempt"] == 99
    assert dead.status.status_code.name == "ERROR"


@pytest.mark.parametrize(
    "hostile",
    [
        {"traceparent": "x" * 60_000},
        {"traceparent": PARENT.upper(), "tracestate": "=" * 5000},
        {"traceparent": "00-<script>alert(1)</script>-00-01"},
        {"tracestate": "a=b"},
    ],
)
async def test_a_hostile_context_starts_a_new_trace_and_the_message_is_applied(
    spans: Spans, hostile: dict[str, str]
) -> None:
    async def handle(message: Incoming, _session: object) -> None:
        pass

    handler = Handler("h", handle, KafkaSource("t", "g"), dedupe="none")  # type: ignore[arg-type]
    verdict = await Processor(handler).process(_incoming(hostile))
    assert verdict.outcome == "done"
    (span,) = spans.named("process")
    assert span.parent is None
    assert not span.links


def test_a_stream_decision_is_a_span_whose_outputs_carry_its_children(spans: Spans) -> None:
    message = _incoming({"traceparent": PARENT})
    emits = [
        Emit("shop.order.admitted", b"1", b"{}", [("id", b"x"), ("traceparent", b"old")]),
    ]
    sent = trace_decision(tracing.tracer(), "admission", message, emits, 0)
    assert isinstance(sent, list)
    decision = spans.named("process")[0]
    child = spans.named("send")[0]
    assert decision.attributes is not None
    assert decision.attributes["relaybus.decision"] == "shop.order.admitted"
    assert child.parent is not None
    assert child.parent.span_id == decision.context.span_id
    headers = dict(sent[0].headers)
    assert headers["traceparent"].decode() == f"00-{TRACE}-{child.context.span_id:016x}-01"
    refused = trace_decision(
        tracing.tracer(), "admission", message, InvalidMessage("schema", "bad"), 0
    )
    assert isinstance(refused, InvalidMessage)
    assert spans.named("process")[1].attributes["relaybus.decision"] == "dead-letter:schema"  # type: ignore[index]


def test_a_replayed_message_starts_a_new_trace_linked_to_the_original(spans: Spans) -> None:
    original = {"id": "m-1", "traceparent": PARENT, "tracestate": "a=b", "type": "t"}
    replayed = redriven_headers(original, action="dlq.replay", destination="orders", audit_id=42)
    (span,) = spans.named("dlq.replay")
    assert span.parent is None
    assert hex_trace(span) != TRACE
    assert [f"{link.context.trace_id:032x}" for link in span.links] == [TRACE]
    assert span.attributes is not None
    assert span.attributes["relaybus.audit.id"] == 42
    flags = int(span.context.trace_flags)
    assert (
        replayed["traceparent"] == f"00-{hex_trace(span)}-{span.context.span_id:016x}-{flags:02x}"
    )
    assert "tracestate" not in replayed
    assert replayed["id"] == "m-1"
    pairs = redriven_pairs(
        [("id", b"m-2"), ("traceparent", PARENT.encode())],
        action="replay.reprocess",
        destination="copy",
        audit_id=7,
    )
    assert [n for n, _ in pairs].count("traceparent") == 1
    assert dict(pairs)["traceparent"] != PARENT.encode()


def test_redrive_leaves_the_headers_as_they_are_when_tracing_is_off() -> None:
    original = {"id": "m-1", "traceparent": PARENT}
    assert redriven_headers(original, action="a", destination="d", audit_id=1) == original


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, "ParentBased"),
        ({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
         "ParentBasedTraceIdRatio"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"},
         "TraceIdRatioBased"),
        ({"OTEL_TRACES_SAMPLER": "always_off"}, "StaticSampler"),
    ],
)  # fmt: skip
def test_the_standard_sampler_variables_choose_the_sampler(
    environ: dict[str, str], expected: str
) -> None:
    assert type(otel.sampler(environ)).__name__ == expected


@pytest.mark.parametrize(
    "environ",
    [
        {"OTEL_TRACES_SAMPLER": "jaeger_remote"},
        {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "lots"},
        {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "7"},
    ],
)
def test_a_sampler_relaybus_cannot_follow_leaves_tracing_off_with_a_reason(
    environ: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", **environ}
    assert tracing.configure("x", env).enabled is False
    assert "OTEL_TRACES_SAMPLER" in caplog.text


@pytest.fixture
def ratio_spans() -> Iterator[Spans]:
    """A tracer sampling 10 % of new traces and following its parents' decisions."""
    exporter = InMemorySpanExporter()
    tracer = otel.build(
        "unit",
        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
        exporter=exporter,
    )
    tracing.install(tracer)
    try:
        yield Spans(exporter, tracer)
    finally:
        tracing.install(None)
        tracer.shutdown()


async def _relayed(traceparent: str) -> str | None:
    """The ``traceparent`` a row stored with ``traceparent`` leaves the relay with."""
    broker = InMemoryPublisher("kafka")
    routed = RoutedPublisher(
        {"kafka": broker}, Router([Route(pattern="*", brokers=["kafka"])]), RelayMetrics()
    )
    message = Message.from_data("t", "a", "1", {})
    await routed.publish([Message(**{**message.__dict__, "traceparent": traceparent})])
    return broker.sent[0].traceparent


async def _seen_by_a_handler(traceparent: str) -> list[str | None]:
    """What a handler delivered with ``traceparent`` finds current, then the context
    of what it writes (a span it starts)."""
    seen: list[str | None] = []

    async def handle(message: Incoming, _session: object) -> None:
        seen.append(tracing.tracer().current_traceparent())
        nested = tracing.tracer().start("create x", kind="producer")
        seen.append(nested.traceparent)
        nested.end()

    handler = Handler("h", handle, KafkaSource("t", "g"), dedupe="none")  # type: ignore[arg-type]
    await Processor(handler).process(_incoming({"traceparent": traceparent}))
    return seen


async def test_an_unsampled_trace_records_nothing_and_passes_its_context_on(
    ratio_spans: Spans,
) -> None:
    """Under a parent-based sampler an unsampled message costs no span: the relay sends
    the row's context as it is, a handler runs under it, and what the handler writes
    stays in the unsampled trace (no orphan trace started halfway)."""
    unsampled = f"00-{TRACE}-{SPAN}-00"
    assert await _relayed(unsampled) == unsampled
    assert await _seen_by_a_handler(unsampled) == [unsampled, unsampled]
    assert ratio_spans.finished() == []


async def test_a_row_shaped_unsampled_but_malformed_goes_on_as_stored_and_is_never_used(
    ratio_spans: Spans,
) -> None:
    """An unsampled-looking value (55 characters, flags ``00``) is taken at its word on
    the hot path and checked in full only where it is used: the relay sends it on as
    stored (as with tracing off), a delivery records nothing, and inside it the value is
    no context: ``current`` has none and what the handler writes starts its own trace."""
    malformed = f"00-{TRACE.upper()}-{SPAN}-00"  # upper-case: not a W3C value
    assert len(malformed) == 55
    assert await _relayed(malformed) == malformed
    delivery = tracing.tracer().start_delivery("t", {"traceparent": malformed})
    assert not delivery.recording
    assert delivery.traceparent is None
    assert delivery.trace_id is None
    seen = await _seen_by_a_handler(malformed)
    assert seen[0] is None
    own = parse_traceparent(seen[1])
    assert own is not None
    assert own.trace_id != TRACE  # a trace of its own


def test_start_publish_skips_an_unsampled_row_and_traces_the_others(ratio_spans: Spans) -> None:
    traced = tracing.tracer()
    assert traced.start_publish("t", f"00-{TRACE}-{SPAN}-00") is None
    sampled = traced.start_publish("t", PARENT)
    assert sampled is not None
    assert sampled.recording
    assert sampled.trace_id == TRACE
    sampled.end()
    fresh = traced.start_publish("t", None)  # written outside any trace: a root here
    assert fresh is not None
    assert fresh.trace_id not in (None, TRACE)
    fresh.end()
    (child,) = [s for s in ratio_spans.finished() if hex_trace(s) == TRACE]
    assert child.name == "publish t"
    assert child.parent is not None
    assert child.parent.span_id == int(SPAN, 16)
