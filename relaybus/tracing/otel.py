"""The OpenTelemetry SDK behind ``Tracer``: imported only when tracing is on.

The exporter is OTLP over HTTP/protobuf (the OTLP default), configured entirely by the
standard ``OTEL_EXPORTER_OTLP_*`` variables; spans leave through the SDK's
``BatchSpanProcessor`` (``OTEL_BSP_*``), off the event loop's thread. The sampler is
the SDK's from ``OTEL_TRACES_SAMPLER``/``_ARG`` (default parent-based always-on).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from relaybus.tracing.api import Carrier, Kind, Span, Value
from relaybus.tracing.w3c import TraceContext, read_context

_KINDS = {
    "internal": SpanKind.INTERNAL,
    "server": SpanKind.SERVER,
    "client": SpanKind.CLIENT,
    "producer": SpanKind.PRODUCER,
    "consumer": SpanKind.CONSUMER,
}
_EMPTY = otel_context.Context()


def span_context(found: TraceContext) -> SpanContext:
    """A remote ``SpanContext`` for a context read from headers."""
    state = TraceState.from_header([found.tracestate]) if found.tracestate else None
    return SpanContext(
        int(found.trace_id, 16),
        int(found.span_id, 16),
        is_remote=True,
        trace_flags=TraceFlags(found.flags),
        trace_state=state,
    )


class OtelSpan:
    """``Span`` over an SDK span."""

    __slots__ = ("inner",)

    def __init__(self, inner: trace.Span) -> None:
        self.inner = inner

    @property
    def traceparent(self) -> str | None:
        ctx = self.inner.get_span_context()
        if not ctx.is_valid:
            return None
        return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"

    @property
    def trace_id(self) -> str | None:
        ctx = self.inner.get_span_context()
        return f"{ctx.trace_id:032x}" if ctx.is_valid else None

    def set(self, key: str, value: Value) -> None:
        self.inner.set_attribute(key, value)

    def event(self, name: str, attributes: Mapping[str, Value] | None = None) -> None:
        self.inner.add_event(name, dict(attributes) if attributes else None)

    def fail(self, error: BaseException | str) -> None:
        if isinstance(error, BaseException):
            self.inner.record_exception(error)
            self.inner.set_status(Status(StatusCode.ERROR, type(error).__name__))
        else:
            self.inner.set_status(Status(StatusCode.ERROR, error[:200]))

    def end(self) -> None:
        self.inner.end()


class OtelTracer:
    """``Tracer`` over an SDK ``TracerProvider``."""

    enabled = True

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer("relaybus")

    def start(
        self,
        name: str,
        *,
        kind: Kind = "internal",
        parent: Carrier | None = None,
        links: Sequence[tuple[Carrier, Mapping[str, Value]]] = (),
        attributes: Mapping[str, Value] | None = None,
        start_ns: int | None = None,
    ) -> Span:
        ctx: otel_context.Context | None = None
        if parent is not None:
            found = read_context(parent)
            # A carrier without a (valid) context starts a new trace: never the
            # current span's, which belongs to some other message.
            ctx = (
                trace.set_span_in_context(NonRecordingSpan(span_context(found)))
                if found is not None
                else _EMPTY
            )
        otel_links = [
            Link(span_context(found), dict(attrs))
            for carrier, attrs in links
            if (found := read_context(carrier)) is not None
        ]
        return OtelSpan(
            self._tracer.start_span(
                name,
                context=ctx,
                kind=_KINDS[kind],
                attributes=dict(attributes) if attributes else None,
                links=otel_links or None,
                start_time=start_ns,
            )
        )

    @contextmanager
    def span(
        self,
        name: str,
        *,
        kind: Kind = "internal",
        parent: Carrier | None = None,
        links: Sequence[tuple[Carrier, Mapping[str, Value]]] = (),
        attributes: Mapping[str, Value] | None = None,
    ) -> Iterator[Span]:
        started = self.start(name, kind=kind, parent=parent, links=links, attributes=attributes)
        assert isinstance(started, OtelSpan)
        with trace.use_span(started.inner, end_on_exit=True):
            yield started

    def current_traceparent(self) -> str | None:
        return OtelSpan(trace.get_current_span()).traceparent

    @contextmanager
    def activate(self, span: Span) -> Iterator[Span]:
        assert isinstance(span, OtelSpan)
        with trace.use_span(span.inner, end_on_exit=False):
            yield span

    def current(self) -> Span:
        return OtelSpan(trace.get_current_span())

    def shutdown(self) -> None:
        """Flush what is queued and stop exporting."""
        self.provider.shutdown()


def endpoint(environ: Mapping[str, str]) -> str | None:
    """The OTLP/HTTP traces URL ``environ`` names (the signal's own variable as is, the
    general one with ``/v1/traces`` appended, as the specification says)."""
    if own := environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip():
        return own
    if general := environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip():
        return general.rstrip("/") + "/v1/traces"
    return None


def build(
    service_name: str, environ: Mapping[str, str], exporter: SpanExporter | None = None
) -> OtelTracer:
    """A tracer exporting through ``exporter`` (OTLP/HTTP to the endpoint ``environ``
    names by default), with ``service.name`` = ``service_name``."""
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    exporter = exporter or OTLPSpanExporter(endpoint=endpoint(environ))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return OtelTracer(provider)
