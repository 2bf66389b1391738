"""Lean spans (``relaybus.tracing.lean``): the relay's publish spans from a sampled
row context are recorded without the SDK's span and reach the exporter as the same
spans the SDK would make; the buffer is bounded; the shipper child rebuilds them."""

from __future__ import annotations

import io
import pickle

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from relaybus import tracing
from relaybus.brokers.memory import InMemoryPublisher
from relaybus.message import Message
from relaybus.outbox.metrics import RelayMetrics
from relaybus.outbox.routed import RoutedPublisher
from relaybus.outbox.routing import Router
from relaybus.settings import Route
from relaybus.tracing import otel
from relaybus.tracing.lean import LeanRecorder, LeanSpan, Record

TRACE = "0af7651916cd43dd8448eb211c80319c"
ROW_SPAN = "b7ad6b7169203331"


async def test_a_publish_from_a_sampled_row_is_a_lean_span_exported_as_its_child() -> None:
    exporter = InMemorySpanExporter()
    tracer = otel.build("unit", {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                                 "OTEL_TRACES_SAMPLER_ARG": "0"}, exporter=exporter)  # fmt: skip
    tracing.install(tracer)
    broker = InMemoryPublisher("kafka")
    try:
        routed = RoutedPublisher(
            {"kafka": broker}, Router([Route(pattern="*", brokers=["kafka"])]), RelayMetrics()
        )
        row = Message.from_data("order.created", "order", "1", {}).with_traceparent(
            f"00-{TRACE}-{ROW_SPAN}-01"
        )
        await routed.publish([row])
        tracer.force_flush()
    finally:
        tracing.install(None)
        tracer.shutdown()
    (span,) = exporter.get_finished_spans()
    assert span.name == "publish order.created"
    assert span.kind.name == "PRODUCER"
    assert f"{span.context.trace_id:032x}" == TRACE  # a ratio of 0 did not drop it:
    assert span.parent is not None  # the row's sampled context decided
    assert f"{span.parent.span_id:016x}" == ROW_SPAN
    assert span.attributes is not None
    assert span.attributes["relaybus.outcome"] == "published"
    assert span.resource.attributes["service.name"] == "unit"
    (sent,) = broker.sent
    assert sent.traceparent == f"00-{TRACE}-{span.context.span_id:016x}-01"


def test_a_lean_span_made_current_parents_what_starts_inside() -> None:
    exporter = InMemorySpanExporter()
    tracer = otel.build("unit", {}, exporter=exporter)
    lean = tracer.start("publish x", kind="producer",
                        parent={"traceparent": f"00-{TRACE}-{ROW_SPAN}-01"})  # fmt: skip
    assert isinstance(lean, LeanSpan)
    with tracer.activate(lean):
        inner = tracer.start("create y")
        inner.end()
    lean.end()
    tracer.shutdown()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    child = spans["create y"]
    assert child.parent is not None
    assert child.parent.span_id == spans["publish x"].context.span_id


def test_links_or_an_unsampled_sampler_keep_the_sdk_span() -> None:
    ratio = {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1"}
    tracer = otel.build("unit", ratio, exporter=InMemorySpanExporter())
    parent = {"traceparent": f"00-{TRACE}-{ROW_SPAN}-01"}
    assert not isinstance(tracer.start("a", parent=parent), LeanSpan)  # not parent-based
    based = otel.build("unit", {}, exporter=InMemorySpanExporter())
    assert not isinstance(based.start("b", parent=parent, links=[(parent, {})]), LeanSpan)
    tracer.shutdown()
    based.shutdown()


def test_the_buffer_is_bounded_and_counts_what_it_drops() -> None:
    delivered: list[list[Record]] = []
    recorder = LeanRecorder(delivered.append, capacity=3, batch=100, interval=60)
    for n in range(5):
        LeanSpan(recorder, f"s{n}", "internal", TRACE, ROW_SPAN, None, None).end()
    recorder.flush()
    assert [r[0] for r in delivered[0]] == ["s0", "s1", "s2"]
    assert recorder.dropped == 2


def test_a_failing_delivery_drops_its_batch_and_the_recorder_goes_on() -> None:
    calls: list[int] = []

    def deliver(records: list[Record]) -> None:
        calls.append(len(records))
        if len(calls) == 1:
            raise OSError("shipper gone")

    recorder = LeanRecorder(deliver, interval=60)
    LeanSpan(recorder, "a", "internal", TRACE, ROW_SPAN, None, None).end()
    recorder.flush()
    LeanSpan(recorder, "b", "internal", TRACE, ROW_SPAN, None, None).end()
    recorder.flush()
    assert calls == [1, 1]


def test_the_shipper_child_exports_each_batch_it_reads() -> None:
    recorder_batches: list[list[Record]] = []
    recorder = LeanRecorder(recorder_batches.append, interval=60)
    span = LeanSpan(recorder, "publish z", "producer", TRACE, ROW_SPAN, {"k": "v"}, None)
    span.fail(ValueError("refused"))
    span.end()
    recorder.flush()
    data = pickle.dumps(recorder_batches[0])
    exporter = InMemorySpanExporter()
    stream = io.BytesIO(len(data).to_bytes(4, "big") + data)
    assert otel.ship_main(["svc"], stream, exporter) == 0
    (shipped,) = exporter.get_finished_spans()
    assert shipped.name == "publish z"
    assert shipped.status.status_code.name == "ERROR"
    assert shipped.attributes == {"k": "v"}
    assert shipped.events[0].name == "exception"
    assert shipped.resource.attributes["service.name"] == "svc"
