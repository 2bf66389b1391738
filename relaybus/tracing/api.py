"""What relaybus code asks of tracing: ``Tracer`` and ``Span``, and the tracer that
does nothing (tracing off: no OpenTelemetry import, no allocation per span).

Span names and attributes follow OpenTelemetry's messaging and database semantic
conventions where they exist (``messaging.system``, ``messaging.destination.name``,
``messaging.message.id``, ``messaging.operation.type``); relaybus's own facts are under
``relaybus.*`` (docs/tracing.md lists them).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Literal, Protocol

Kind = Literal["internal", "server", "client", "producer", "consumer"]
Value = str | int | float | bool
Carrier = Mapping[str, str]


class Span(Protocol):
    """One span. ``traceparent`` is the W3C header that makes a receiver's span its
    child (None when tracing is off)."""

    @property
    def traceparent(self) -> str | None: ...

    @property
    def trace_id(self) -> str | None: ...

    @property
    def recording(self) -> bool:
        """Whether anything set on it is kept (false when off or not sampled): describe
        a span only when it is."""
        ...

    def set(self, key: str, value: Value) -> None:
        """Set one attribute."""

    def describe(self, attributes: Mapping[str, Value]) -> None:
        """Set several attributes at once (cheaper than one ``set`` each)."""

    def event(self, name: str, attributes: Mapping[str, Value] | None = None) -> None:
        """Record a point in time on the span."""

    def fail(self, error: BaseException | str) -> None:
        """Mark the span failed (status ERROR), recording the exception if given one."""

    def end(self) -> None:
        """End the span (spans from ``Tracer.start`` only)."""


class Tracer(Protocol):
    """Starts spans. ``parent``: None means the current span (or a new trace), a carrier
    (message headers) means the context it carries — or a new trace when it carries
    none or a malformed one. ``links``: carriers whose contexts the span links to
    (replays link to the original message). Never raises on a carrier's content."""

    @property
    def enabled(self) -> bool: ...

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
        """A started span, not made current; the caller ends it."""
        ...

    def start_publish(self, message_type: str, traceparent: str | None) -> Span | None:
        """A relay's span for publishing a message of ``message_type`` stored with
        ``traceparent`` (None: it was written outside any trace): ``publish <type>``,
        kind producer, the child of that context (a new trace without one), not made
        current. None when it would record nothing and the message goes on with its
        stored context unchanged (a trace its root did not sample, under a parent-based
        sampler): every message takes this path, which then costs one check of the
        value and no object."""
        ...

    def start_delivery(self, source: str, carrier: Carrier) -> Span:
        """A consumer's span for one delivery from ``source``: ``process <source>``, kind
        consumer, the child of the context ``carrier`` carries and linked to it (as
        ``start`` makes it), not made current. Every delivery takes this path: in a
        trace its root did not sample, it costs one check of the header."""
        ...

    def span(
        self,
        name: str,
        *,
        kind: Kind = "internal",
        parent: Carrier | None = None,
        links: Sequence[tuple[Carrier, Mapping[str, Value]]] = (),
        attributes: Mapping[str, Value] | None = None,
    ) -> AbstractContextManager[Span]:
        """A span current for the ``with`` block (spans started inside are its
        children), ended at its end; an exception leaving it marks it failed."""
        ...

    def current_traceparent(self) -> str | None:
        """The ``traceparent`` of the current span, or None."""
        ...

    def activate(self, span: Span) -> AbstractContextManager[Span]:
        """Make ``span`` (from ``start``) current for the ``with`` block, without
        ending it: the caller records its outcome and ends it later."""
        ...

    def current(self) -> Span:
        """The current span (``NULL_SPAN`` when there is none)."""
        ...


class Inert:
    """The methods of a span that records nothing (tracing off, or not sampled)."""

    __slots__ = ()
    recording = False

    def set(self, key: str, value: Value) -> None:
        pass

    def describe(self, attributes: Mapping[str, Value]) -> None:
        pass

    def event(self, name: str, attributes: Mapping[str, Value] | None = None) -> None:
        pass

    def fail(self, error: BaseException | str) -> None:
        pass

    def end(self) -> None:
        pass


class _NullSpan(Inert):
    __slots__ = ()
    traceparent = None
    trace_id = None


NULL_SPAN: Span = _NullSpan()


class NoTracer:
    """Tracing off: every span is ``NULL_SPAN``; callers on a hot path test ``enabled``
    and skip the work of describing a span at all."""

    enabled = False

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
        return NULL_SPAN

    def start_publish(self, message_type: str, traceparent: str | None) -> Span | None:
        return None

    def start_delivery(self, source: str, carrier: Carrier) -> Span:
        return NULL_SPAN

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
        yield NULL_SPAN

    def current_traceparent(self) -> str | None:
        return None

    @contextmanager
    def activate(self, span: Span) -> Iterator[Span]:
        yield span

    def current(self) -> Span:
        return NULL_SPAN
