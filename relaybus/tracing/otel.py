"""The OpenTelemetry SDK behind ``Tracer``: imported only when tracing is on.

The exporter is OTLP over HTTP/protobuf (the OTLP default), configured entirely by the
standard ``OTEL_EXPORTER_OTLP_*`` variables; spans leave through the SDK's
``BatchSpanProcessor`` (``OTEL_BSP_*``), off the event loop's thread. The sampler is
the SDK's from ``OTEL_TRACES_SAMPLER``/``_ARG`` (default parent-based always-on).
"""

from __future__ import annotations

import atexit
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from typing import Any, TypeGuard

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
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

from relaybus.tracing.api import NULL_SPAN, Carrier, Inert, Kind, Span, Value
from relaybus.tracing.lean import LeanLink, LeanRecorder, LeanSpan, Record, as_record
from relaybus.tracing.otlp_json import OtlpJsonSender
from relaybus.tracing.w3c import (
    TRACEPARENT,
    TraceContext,
    is_unsampled,
    parse_traceparent,
    read_context,
)

_KINDS = {
    "internal": SpanKind.INTERNAL,
    "server": SpanKind.SERVER,
    "client": SpanKind.CLIENT,
    "producer": SpanKind.PRODUCER,
    "consumer": SpanKind.CONSUMER,
}
_EMPTY = otel_context.Context()
_NO_ATTRIBUTES: Mapping[str, Value] = {}
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
SCOPE = InstrumentationScope("relaybus")
# The unsampled trace a block runs in (``Unsampled`` made current): relaybus's own
# marker instead of an OpenTelemetry context, which costs ten times as much to attach,
# on the path nine in ten messages take at a 10 % ratio. Every block that makes a span
# current sets it (None for a recording span), so the two never disagree for
# relaybus's spans. Its value is the delivery's header as it came, of the unsampled
# shape but not yet checked in full: whoever reads it checks it (``is_unsampled``).
_UNSAMPLED: ContextVar[str | None] = ContextVar("relaybus_unsampled", default=None)
# The lean span a block runs in (``current()`` returns it, so what is set on the
# current span is kept); None inside an SDK span made current within it.
_LEAN: ContextVar[LeanSpan | None] = ContextVar("relaybus_lean", default=None)


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


def format_traceparent(ctx: SpanContext) -> str:
    """The W3C ``traceparent`` header of a (valid) span context."""
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


class OtelSpan:
    """``Span`` over an SDK span."""

    __slots__ = ("_traceparent", "inner")

    def __init__(self, inner: trace.Span) -> None:
        self.inner = inner
        self._traceparent: str | None = None

    @property
    def traceparent(self) -> str | None:
        if self._traceparent is None:  # asked twice on the relay's path: made once
            ctx = self.inner.get_span_context()
            if not ctx.is_valid:
                return None
            self._traceparent = format_traceparent(ctx)
        return self._traceparent

    @property
    def trace_id(self) -> str | None:
        ctx = self.inner.get_span_context()
        return f"{ctx.trace_id:032x}" if ctx.is_valid else None

    @property
    def recording(self) -> bool:
        return self.inner.is_recording()

    def set(self, key: str, value: Value) -> None:
        self.inner.set_attribute(key, value)

    def describe(self, attributes: Mapping[str, Value]) -> None:
        self.inner.set_attributes(attributes)

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


class Unsampled(Inert):
    """The span of a trace its root chose not to sample, under a parent-based sampler:
    the SDK would record nothing either. It passes its parent's context on unchanged
    (so what it sends stays unsampled) and costs no SDK call: at a 10 % ratio, nine in
    ten messages take this path (docs/tracing.md, "Sampling, and what it costs"). It is
    its own ``activate`` block (one object per message, not two): made current by one
    ``with`` at a time.

    Made from a value that only looks unsampled (``looks_unsampled``): its context is
    checked in full when it is used (``traceparent``; ``current()`` and spans started
    inside do the same), and a value that turns out malformed is ignored there, as
    ``read_context`` ignores it: most deliveries never use theirs."""

    __slots__ = ("_raw", "_token")

    def __init__(self, raw: str) -> None:
        self._raw = raw

    @property
    def traceparent(self) -> str | None:
        return self._raw if is_unsampled(self._raw) else None

    @property
    def trace_id(self) -> str | None:
        return self._raw[3:35] if is_unsampled(self._raw) else None

    def __enter__(self) -> Span:
        self._token = _UNSAMPLED.set(self._raw)
        return self

    def __exit__(self, *_: object) -> None:
        _UNSAMPLED.reset(self._token)


def looks_unsampled(value: str | None) -> TypeGuard[str]:
    """A ``traceparent``'s shape with flags ``00`` (length and last characters only):
    the hot path's test, the full check left to where the value is used (``Unsampled``).
    A value of another shape takes the full path (``read_context``)."""
    return value is not None and len(value) == 55 and value.endswith("-00")


class _InLean:
    """The block a ``LeanSpan`` is current for: relaybus's markers (what relaybus starts
    inside is a lean child, ``current()`` returns it) and, for OpenTelemetry
    instrumentations running inside (asyncpg's, say), the span's context as the current
    OpenTelemetry context. A plain class: every sampled delivery comes through here."""

    __slots__ = ("_context", "_lean", "_unsampled", "span")

    def __init__(self, span: LeanSpan) -> None:
        self.span = span

    def __enter__(self) -> Span:
        span = self.span
        self._unsampled = _UNSAMPLED.set(None)
        self._lean = _LEAN.set(span)
        inner = NonRecordingSpan(
            SpanContext(int(span.trace_id, 16), int(span.span_id, 16), False, _SAMPLED)
        )
        self._context = otel_context.attach(trace.set_span_in_context(inner))
        return span

    def __exit__(self, *_: object) -> None:
        otel_context.detach(self._context)
        _LEAN.reset(self._lean)
        _UNSAMPLED.reset(self._unsampled)


class OtelTracer:
    """``Tracer`` over an SDK ``TracerProvider``."""

    enabled = True

    def __init__(self, provider: TracerProvider, lean: LeanRecorder[Any] | None = None) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer("relaybus")
        # A parent-based sampler never records under an unsampled parent: such spans
        # are skipped without asking the SDK (``Unsampled``).
        self._parent_based = isinstance(provider.sampler, ParentBased)
        # ...and always records under a sampled remote parent (as ``always_on`` does):
        # such a span, links or not, is a ``LeanSpan`` (relaybus.tracing.lean).
        self._lean = lean if self._parent_based or provider.sampler is ALWAYS_ON else None

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
        found: TraceContext | None = None
        if parent is not None:
            if self._parent_based and is_unsampled(raw := parent.get(TRACEPARENT)):
                return Unsampled(raw)
            found = read_context(parent)
            if found is not None and self._parent_based and not found.sampled:
                return Unsampled(found.traceparent)
            if found is not None and found.sampled and self._lean is not None:
                lean_links = self._lean_links(parent, found, links)
                return LeanSpan(self._lean, name, kind, found.trace_id, found.span_id,
                                attributes, start_ns, lean_links)  # fmt: skip
            # A carrier without a (valid) context starts a new trace: never the
            # current span's, which belongs to some other message.
            ctx = (
                trace.set_span_in_context(NonRecordingSpan(span_context(found)))
                if found is not None
                else _EMPTY
            )
        else:
            if self._parent_based and is_unsampled(held := _UNSAMPLED.get()):
                return Unsampled(held)
            if self._lean is not None and (lean := _LEAN.get()) is not None:
                # A child of a recorded local parent: every sampler that makes lean
                # spans records it (parent-based: sampled parent; always_on).
                lean_links = self._lean_links(None, None, links)
                return LeanSpan(self._lean, name, kind, lean.trace_id, lean.span_id,
                                attributes, start_ns, lean_links)  # fmt: skip
            if self._parent_based:
                current = trace.get_current_span().get_span_context()
                if current.is_valid and not current.trace_flags.sampled:
                    return Unsampled(format_traceparent(current))
        otel_links = []
        for carrier, attrs in links:
            # A consumer links to the context it is also the child of: read it once.
            linked = found if carrier is parent else read_context(carrier)
            if linked is not None:
                otel_links.append(Link(span_context(linked), dict(attrs)))
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

    def start_publish(self, message_type: str, traceparent: str | None) -> Span | None:
        if self._parent_based and looks_unsampled(traceparent):
            return None  # goes on as stored, as with tracing off; a consumer checks it
        # start's lean path, without its second reading of the value:
        if self._lean is not None and (found := parse_traceparent(traceparent)) and found.sampled:
            return LeanSpan(self._lean, f"publish {message_type}", "producer", found.trace_id,
                            found.span_id, None, None)  # fmt: skip
        return self.start(
            f"publish {message_type}",
            kind="producer",
            parent={TRACEPARENT: traceparent} if traceparent else {},
        )

    def start_delivery(self, source: str, carrier: Carrier) -> Span:
        raw = carrier.get(TRACEPARENT)
        # looks_unsampled, inline: nine in ten deliveries at a 10 % ratio stop here.
        if self._parent_based and raw is not None and len(raw) == 55 and raw.endswith("-00"):
            return Unsampled(raw)
        # start's lean path, without its second reading of the header:
        if self._lean is not None and (found := read_context(carrier)) and found.sampled:
            link = (found.trace_id, found.span_id, _NO_ATTRIBUTES)
            return LeanSpan(self._lean, f"process {source}", "consumer", found.trace_id,
                            found.span_id, None, None, (link,))  # fmt: skip
        return self.start(
            f"process {source}", kind="consumer", parent=carrier, links=[(carrier, {})]
        )

    @staticmethod
    def _lean_links(
        parent: Carrier | None,
        found: TraceContext | None,
        links: Sequence[tuple[Carrier, Mapping[str, Value]]],
    ) -> tuple[LeanLink, ...]:
        out: list[LeanLink] = []
        for carrier, attrs in links:
            # A consumer links to the context it is also the child of: read it once.
            linked = found if carrier is parent and found is not None else read_context(carrier)
            if linked is not None:
                out.append((linked.trace_id, linked.span_id, attrs))
        return tuple(out)

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
        with self.activate(started):
            try:
                yield started
            except BaseException as err:
                started.fail(err)
                raise
            finally:
                started.end()

    def current_traceparent(self) -> str | None:
        return self.current().traceparent

    def activate(self, span: Span) -> AbstractContextManager[Span]:
        if isinstance(span, Unsampled):
            # What starts inside (an outbox write) stays in the unsampled trace.
            return span
        if isinstance(span, LeanSpan):
            return _InLean(span)
        return self._activate_sdk(span)

    @contextmanager
    def _activate_sdk(self, span: Span) -> Iterator[Span]:
        assert isinstance(span, OtelSpan), "a span of this tracer"
        token = _UNSAMPLED.set(None)
        lean = _LEAN.set(None)  # an SDK span current inside a lean one: its own children
        try:
            with trace.use_span(span.inner, end_on_exit=False):
                yield span
        finally:
            _LEAN.reset(lean)
            _UNSAMPLED.reset(token)

    def current(self) -> Span:
        if (held := _UNSAMPLED.get()) is not None:
            # A malformed value made current is no context: ignored, as it would have
            # been when read in full.
            return Unsampled(held) if is_unsampled(held) else NULL_SPAN
        if (lean := _LEAN.get()) is not None:
            return lean
        return OtelSpan(trace.get_current_span())

    def force_flush(self) -> None:
        """Hand every ended span to its exporter now."""
        if self._lean is not None:
            self._lean.flush()
        self.provider.force_flush()

    def shutdown(self) -> None:
        """Flush what is queued and stop exporting."""
        if self._lean is not None:
            self._lean.shutdown()
        self.provider.shutdown()


def endpoint(environ: Mapping[str, str]) -> str | None:
    """The OTLP/HTTP traces URL ``environ`` names (the signal's own variable as is, the
    general one with ``/v1/traces`` appended, as the specification says)."""
    if own := environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip():
        return own
    if general := environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip():
        return general.rstrip("/") + "/v1/traces"
    return None


def sampler(environ: Mapping[str, str]) -> Sampler:
    """The sampler ``OTEL_TRACES_SAMPLER``/``_ARG`` in ``environ`` name (the standard's
    names; default ``parentbased_always_on``). ``ValueError`` for anything else."""
    name = environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    raw = environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0").strip() or "1.0"
    try:
        ratio = float(raw)
    except ValueError:
        raise ValueError(f"OTEL_TRACES_SAMPLER_ARG={raw[:20]!r} is not a number") from None
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"OTEL_TRACES_SAMPLER_ARG={ratio} is not between 0 and 1")
    known: dict[str, Sampler] = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": TraceIdRatioBased(ratio),
        "parentbased_always_on": ParentBased(ALWAYS_ON),
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": ParentBasedTraceIdRatio(ratio),
    }
    if name not in known:
        raise ValueError(f"OTEL_TRACES_SAMPLER={name[:40]!r}: use one of {', '.join(known)}")
    return known[name]


def build(
    service_name: str, environ: Mapping[str, str], exporter: SpanExporter | None = None
) -> OtelTracer:
    """A tracer exporting through ``exporter`` (OTLP/HTTP to the endpoint ``environ``
    names by default), with ``service.name`` = ``service_name`` and the sampler
    ``environ`` names. ``ValueError`` for a sampler setting it cannot follow."""
    resource = Resource.create({"service.name": service_name})
    provider = TracerProvider(resource=resource, sampler=sampler(environ))
    if exporter is None:
        url = endpoint(environ)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
        # Lean spans go as OTLP/HTTP JSON to the same receiver (relaybus.tracing.otlp_json).
        sender = OtlpJsonSender(url or _DEFAULT_TRACES_URL, service_name, environ)
        lean: LeanRecorder[Any] = LeanRecorder(sender.deliver, sender.keep, close=sender.close)
        # What ended in the last second is sent at exit too (the SDK's provider does
        # the same for its spans): a relay stopped right after a batch keeps its spans.
        atexit.register(lean.shutdown)
    else:
        provider.add_span_processor(BatchSpanProcessor(exporter))
        chosen = exporter

        def export_here(records: list[Record]) -> None:
            chosen.export(to_readable(records, resource))

        lean = LeanRecorder(export_here, as_record)
    return OtelTracer(provider, lean)


# The SDK exporter's default when no endpoint variable is set.
_DEFAULT_TRACES_URL = "http://localhost:4318/v1/traces"


def to_readable(records: list[Record], resource: Resource) -> list[ReadableSpan]:
    """The SDK's ``ReadableSpan``s for lean span ``records`` (what its exporters take)."""
    kinds = {k.name.lower(): k for k in SpanKind}
    spans = []
    for (
        name,
        kind,
        trace_hex,
        span_hex,
        parent_hex,
        start,
        end,
        attrs,
        error,
        events,
        links,
    ) in records:
        trace_id, span_id, parent = int(trace_hex, 16), int(span_hex, 16), int(parent_hex, 16)
        spans.append(
            ReadableSpan(
                name=name,
                context=SpanContext(trace_id, span_id, is_remote=False, trace_flags=_SAMPLED),
                parent=SpanContext(trace_id, parent, is_remote=True, trace_flags=_SAMPLED),
                resource=resource,
                attributes=attrs,
                events=[Event(n, dict(a), timestamp=t) for n, t, a in events],
                links=[
                    Link(
                        SpanContext(int(t, 16), int(i, 16), is_remote=True, trace_flags=_SAMPLED),
                        dict(a),
                    )
                    for t, i, a in links
                ],
                kind=kinds.get(kind, SpanKind.INTERNAL),
                status=Status(StatusCode.ERROR, error) if error else Status(StatusCode.UNSET),
                start_time=start,
                end_time=end,
                instrumentation_scope=SCOPE,
            )
        )
    return spans
