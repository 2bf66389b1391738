"""Lean spans (``relaybus.tracing.lean``): the relay's publish spans from a sampled
row context are recorded without the SDK's span and reach the exporter as the same
spans the SDK would make; the buffer is bounded; OTLP/HTTP JSON carries them
(``relaybus.tracing.otlp_json``) with the standard exporter variables."""

from __future__ import annotations

import gc
import gzip
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from relaybus import tracing
from relaybus.brokers.memory import InMemoryPublisher
from relaybus.message import Message
from relaybus.outbox.metrics import RelayMetrics
from relaybus.outbox.routed import RoutedPublisher
from relaybus.outbox.routing import Router
from relaybus.settings import Route
from relaybus.tracing import otel, otlp_json
from relaybus.tracing.api import Value
from relaybus.tracing.lean import LeanRecorder, LeanSpan, Record, as_record
from relaybus.tracing.otlp_json import OtlpJsonSender, encode

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
        assert isinstance(inner, LeanSpan)  # a recorded parent's child: lean as well
        with tracer.activate(inner):
            assert tracer.current() is inner
            innermost = tracer.start("write z")
            innermost.end()
            # An OpenTelemetry instrumentation's span (asyncpg's, say) is its child too.
            tracer.provider.get_tracer("an.instrumentation").start_span("SELECT").end()
        inner.end()
        assert tracer.current() is lean  # the block ended: its parent is current again
    lean.end()
    tracer.shutdown()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert {f"{s.context.trace_id:032x}" for s in spans.values()} == {TRACE}
    assert spans["create y"].parent is not None
    assert spans["create y"].parent.span_id == spans["publish x"].context.span_id
    assert spans["write z"].parent is not None
    assert spans["write z"].parent.span_id == spans["create y"].context.span_id
    assert spans["SELECT"].parent is not None
    assert spans["SELECT"].parent.span_id == spans["create y"].context.span_id


def test_inside_a_lean_span_an_unsampled_delivery_stays_unsampled() -> None:
    tracer = otel.build("unit", {}, exporter=InMemorySpanExporter())
    lean = tracer.start("process a", parent={"traceparent": f"00-{TRACE}-{ROW_SPAN}-01"})
    unsampled = f"00-{'3' * 32}-{'4' * 16}-00"
    with tracer.activate(lean):
        other = tracer.start("process b", parent={"traceparent": unsampled})
        with tracer.activate(other):
            assert tracer.current_traceparent() == unsampled
            assert not tracer.start("write c").recording  # its outbox row: unsampled
        assert tracer.current() is lean
    tracer.shutdown()


def test_a_sampler_that_is_not_parent_based_keeps_the_sdk_span() -> None:
    ratio = {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1"}
    tracer = otel.build("unit", ratio, exporter=InMemorySpanExporter())
    parent = {"traceparent": f"00-{TRACE}-{ROW_SPAN}-01"}
    assert not isinstance(tracer.start("a", parent=parent), LeanSpan)
    tracer.shutdown()


def test_a_consumers_lean_span_keeps_its_links_and_is_the_current_span() -> None:
    exporter = InMemorySpanExporter()
    tracer = otel.build("unit", {}, exporter=exporter)
    parent = {"traceparent": f"00-{TRACE}-{ROW_SPAN}-01"}
    other = {"traceparent": f"00-{'1' * 32}-{'2' * 16}-01"}
    span = tracer.start("process t", kind="consumer", parent=parent,
                        links=[(parent, {}), (other, {"relaybus.why": "replay"})])  # fmt: skip
    assert isinstance(span, LeanSpan)
    with tracer.activate(span):
        tracer.current().set("relaybus.order.id", "7")  # kept: the current span is it
        assert tracer.current_traceparent() == span.traceparent
    span.end()
    tracer.shutdown()
    (done,) = exporter.get_finished_spans()
    assert done.attributes == {"relaybus.order.id": "7"}
    linked = [(f"{link.context.trace_id:032x}", dict(link.attributes or {})) for link in done.links]
    assert linked == [(TRACE, {}), ("1" * 32, {"relaybus.why": "replay"})]


def test_the_buffer_is_bounded_and_counts_what_it_drops() -> None:
    delivered: list[list[Record]] = []
    recorder = LeanRecorder(delivered.append, as_record, capacity=3, batch=100, interval=60)
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

    recorder = LeanRecorder(deliver, as_record, interval=60)
    LeanSpan(recorder, "a", "internal", TRACE, ROW_SPAN, None, None).end()
    recorder.flush()
    LeanSpan(recorder, "b", "internal", TRACE, ROW_SPAN, None, None).end()
    recorder.flush()
    assert calls == [1, 1]


def _failed_span() -> list[Record]:
    batches: list[list[Record]] = []
    recorder = LeanRecorder(batches.append, as_record, interval=60)
    attributes: dict[str, Value] = {"k": "v", "n": 3, "ok": True, "ms": 1.5}
    span = LeanSpan(recorder, "publish z", "producer", TRACE, ROW_SPAN, attributes, None,
                    ((TRACE, ROW_SPAN, {}),))  # fmt: skip
    span.fail(ValueError("refused"))
    span.end()
    recorder.flush()
    return batches[0]


def test_a_sender_keeps_each_ended_span_as_its_json_text() -> None:
    """What waits in the buffer is one string a span, encoded as it ends: no tuple,
    dict or list for the garbage collector to track while it waits."""
    sender = OtlpJsonSender("http://127.0.0.1:1/v1/traces", "svc", {})
    kept: list[str] = []
    recorder = LeanRecorder(kept.extend, sender.keep, interval=60)
    LeanSpan(recorder, "s", "internal", TRACE, ROW_SPAN, {"k": "v"}, None).end()
    recorder.flush()
    (text,) = kept
    assert isinstance(text, str)
    assert not gc.is_tracked(text)
    span = json.loads(text)
    assert (span["traceId"], span["parentSpanId"], span["name"]) == (TRACE, ROW_SPAN, "s")
    sender.close()


def test_the_json_form_is_otlps() -> None:
    request = json.loads(encode(_failed_span(), "svc"))
    (resource_spans,) = request["resourceSpans"]
    service = resource_spans["resource"]["attributes"]
    assert service == [{"key": "service.name", "value": {"stringValue": "svc"}}]
    (scope,) = resource_spans["scopeSpans"]
    (span,) = scope["spans"]
    assert span["traceId"] == TRACE
    assert span["parentSpanId"] == ROW_SPAN
    assert len(span["spanId"]) == 16
    assert span["kind"] == 4
    assert int(span["endTimeUnixNano"]) >= int(span["startTimeUnixNano"]) > 0
    values = {a["key"]: a["value"] for a in span["attributes"]}
    assert values == {"k": {"stringValue": "v"}, "n": {"intValue": "3"},
                      "ok": {"boolValue": True}, "ms": {"doubleValue": 1.5}}  # fmt: skip
    assert span["status"] == {"code": 2, "message": "ValueError"}
    assert span["links"] == [{"traceId": TRACE, "spanId": ROW_SPAN, "attributes": []}]
    assert span["events"][0]["name"] == "exception"


def test_values_json_cannot_carry_are_encoded_as_otlp_says() -> None:
    batches: list[list[Record]] = []
    recorder = LeanRecorder(batches.append, as_record, interval=60)
    attributes: dict[str, Value] = {"nan": float("nan"), "inf": float("inf"), "big": 2**70,
                                    'q"<\\>\u2028\udc80': "\x00</script>\udc80"}  # fmt: skip
    LeanSpan(recorder, 'n"\n', "internal", TRACE, ROW_SPAN, attributes, None).end()
    recorder.flush()
    (span,) = json.loads(encode(batches[0], "s"))["resourceSpans"][0]["scopeSpans"][0]["spans"]
    values = {a["key"]: a["value"] for a in span["attributes"]}
    assert values["nan"] == {"doubleValue": "NaN"}
    assert values["inf"] == {"doubleValue": "Infinity"}
    assert values["big"] == {"stringValue": str(2**70)}  # past int64: as text
    assert values['q"<\\>\u2028\udc80'] == {"stringValue": "\x00</script>\udc80"}
    assert span["name"] == 'n"\n'


def test_the_encoding_cache_keeps_values_of_different_types_apart() -> None:
    batches: list[list[Record]] = []
    recorder = LeanRecorder(batches.append, as_record, interval=60)
    for value in (1, True, 1.0, "1"):
        LeanSpan(recorder, "s", "internal", TRACE, ROW_SPAN, {"v": value}, None).end()
    recorder.flush()
    fragments = otlp_json._Fragments()
    for _ in range(2):  # the second time from the cache
        request = json.loads(otlp_json.encode(batches[0], "s", fragments))
        spans = request["resourceSpans"][0]["scopeSpans"][0]["spans"]
        got = [s["attributes"][0]["value"] for s in spans]
        assert got == [{"intValue": "1"}, {"boolValue": True}, {"doubleValue": 1.0},
                       {"stringValue": "1"}]  # fmt: skip


class _Receiver(BaseHTTPRequestHandler):
    answer = 200
    got: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.got.append((dict(self.headers), body))
        self.send_response(self.answer)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[_Receiver]]]:
    handler = type("Receiver", (_Receiver,), {"got": [], "answer": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces", handler
    finally:
        server.shutdown()
        server.server_close()


def test_the_sender_posts_json_with_the_standard_headers_and_compression(
    receiver: tuple[str, type[_Receiver]],
) -> None:
    url, handler = receiver
    environ = {"OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=shop,authorization=Bearer%20t",
               "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "gzip"}  # fmt: skip
    sender = OtlpJsonSender(url, "svc", environ)
    sender.deliver([sender.keep(r) for r in _failed_span()])
    sender.close()
    ((headers, body),) = handler.got
    assert headers["Content-Type"] == "application/json"
    assert headers["Content-Encoding"] == "gzip"
    assert headers["x-tenant"] == "shop"
    assert headers["authorization"] == "Bearer t"
    assert json.loads(gzip.decompress(body))["resourceSpans"][0]["scopeSpans"][0]["spans"]


def test_a_refused_or_unreachable_batch_is_dropped_with_a_warning(
    receiver: tuple[str, type[_Receiver]], caplog: pytest.LogCaptureFixture
) -> None:
    url, handler = receiver
    handler.answer = 503
    sender = OtlpJsonSender(url, "svc", {})
    sender.deliver([sender.keep(r) for r in _failed_span()])
    gone = OtlpJsonSender(
        "http://127.0.0.1:9/v1/traces", "svc", {"OTEL_EXPORTER_OTLP_TIMEOUT": "2"}
    )
    gone.deliver([gone.keep(r) for r in _failed_span()])
    assert len(handler.got) == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("answered 503" in m for m in messages)
    assert any("did not answer" in m and "127.0.0.1:9" not in m for m in messages)


def test_settings_it_cannot_follow_are_named() -> None:
    with pytest.raises(ValueError, match="COMPRESSION"):
        OtlpJsonSender(
            "http://127.0.0.1:1/v1/traces", "s", {"OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"}
        )
    with pytest.raises(ValueError, match="TIMEOUT"):
        OtlpJsonSender("http://127.0.0.1:1/v1/traces", "s", {"OTEL_EXPORTER_OTLP_TIMEOUT": "soon"})
