"""Recorded spans that cost microseconds: a tuple per span, kept encoded, sent in batches.

The SDK's span costs about 100 µs to start, describe and end on the relay's machine,
and about as much again to encode for OTLP (docs/tracing.md, "Sampling, and what it
costs"); the relay's own work per message is 60 to 110 µs on the machines measured, so
at a 10 % sample ratio the SDK cost it 10 to 15 %. A ``LeanSpan`` records what a span
needs — ids, links, parent, name, kind, times, attributes, status, events — as plain
values;
``LeanRecorder`` keeps each ended one as its ``keep`` function makes it (in a traced
process ``relaybus.tracing.otlp_json``'s JSON text, a string the garbage collector
never tracks) and hands batches to a delivery function on a thread of its own (an
OTLP/HTTP JSON POST; the SDK's exporter when one is given, in tests).

Used for spans started from a remote sampled parent (the relay's ``publish`` spans, a
consumer's ``process`` span, a stream processor's record): the sampler of every
parent-based configuration records those, so the decision needs no SDK call. Spans
relaybus starts inside them (their children, from the current context) are lean too;
an OpenTelemetry instrumentation's span inside is the SDK's, their child.

Delivery: at most once. A full buffer (``capacity`` ended spans not yet handed over)
drops the newest and counts it (``dropped``); a delivery that raises is logged and its
batch dropped; the recorder never blocks the code that ends a span.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from relaybus.tracing.api import Kind, Value

log = logging.getLogger("relaybus.tracing")

# A link as a lean span takes it: (trace_id hex, span_id hex, attributes).
LeanLink = tuple[str, str, Mapping[str, Value]]
# One ended span, as delivered: (name, kind, trace_id, span_id, parent_span_id,
# start_ns, end_ns, attributes, error (None: ok), events [(name, ns, attributes)],
# links [(trace_id, span_id, attributes)]); ids as lower-case hex, as the wire and
# OTLP's JSON write them (never converted on the traced path).
Record = tuple[
    str,
    str,
    str,
    str,
    str,
    int,
    int,
    dict[str, Value],
    str | None,
    tuple[tuple[str, int, dict[str, Value]], ...],
    tuple[LeanLink, ...],
]
# What the recorder keeps of a record until delivery (``keep`` turns one into it).
Kept = TypeVar("Kept")


def as_record(record: Record) -> Record:
    """``keep`` for a delivery that takes the records themselves (the SDK's exporters)."""
    return record


class LeanRecorder(Generic[Kept]):
    """Buffers ended spans as ``keep`` makes them (on the thread that ends the span);
    a daemon thread delivers them every ``interval`` seconds or as soon as ``batch``
    are waiting.

    ``keep`` runs at once, not at delivery, so that a buffered span can be one string
    (``relaybus.tracing.otlp_json``), which the garbage collector never tracks: a
    second's worth of tuples, dicts and lists would outlive two collections and reach
    the oldest generation, bringing its full collections, each a walk of the whole
    heap, sooner (docs/tracing.md, "Sampling, and what it costs")."""

    def __init__(
        self,
        deliver: Callable[[list[Kept]], None],
        keep: Callable[[Record], Kept],
        capacity: int = 8192,
        batch: int = 512,
        interval: float = 1.0,
        close: Callable[[], None] = lambda: None,
    ) -> None:
        self.deliver = deliver
        self.keep = keep
        self.close = close
        self.capacity = capacity
        self.batch = batch
        self.interval = interval
        self.dropped = 0
        self._ended: list[Kept] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def add(self, record: Record) -> None:
        if len(self._ended) >= self.capacity:  # dropped before it is encoded
            self.dropped += 1
            return
        kept = self.keep(record)
        with self._lock:
            if len(self._ended) >= self.capacity:
                self.dropped += 1
                return
            self._ended.append(kept)
            full = len(self._ended) >= self.batch
        if self._thread is None:
            self._start()
        if full:
            self._wake.set()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="relaybus-lean-spans", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self.interval)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        """Deliver what is buffered now (on the caller's thread)."""
        with self._lock:
            taken, self._ended = self._ended, []
        if not taken:
            return
        try:
            self.deliver(taken)
        except Exception:  # tracing never takes the traced process down
            log.exception("tracing: delivering %d spans failed; they are dropped", len(taken))

    def shutdown(self) -> None:
        """Deliver what is left, stop the thread, then ``close`` the delivery (once:
        a second call does nothing)."""
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()
        self.close()


class LeanSpan:
    """A recorded span that is not the SDK's (see the module): made current by the
    tracer with relaybus's own markers, so what starts inside is its lean child."""

    __slots__ = ("_attributes", "_error", "_events", "_kind", "_links", "_name", "_parent",
                 "_recorder", "_start", "span_id", "trace_id")  # fmt: skip

    recording = True

    def __init__(
        self,
        recorder: LeanRecorder[Any],
        name: str,
        kind: Kind,
        trace_id: str,
        parent_span_id: str,
        attributes: Mapping[str, Value] | None,
        start_ns: int | None,
        links: tuple[LeanLink, ...] = (),
    ) -> None:
        """``trace_id``, ``parent_span_id`` and the links' ids: valid lower-case hex
        (read from a ``traceparent`` or another lean span)."""
        self._recorder = recorder
        self._links = links
        self._name = name
        self._kind = kind
        self.trace_id = trace_id
        self._parent = parent_span_id
        self.span_id = _new_span_id()
        self._attributes: dict[str, Value] = dict(attributes) if attributes else {}
        self._error: str | None = None
        self._events: list[tuple[str, int, dict[str, Value]]] | None = None
        self._start = start_ns if start_ns is not None else time.time_ns()

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-01"

    def set(self, key: str, value: Value) -> None:
        self._attributes[key] = value

    def describe(self, attributes: Mapping[str, Value]) -> None:
        self._attributes.update(attributes)

    def event(self, name: str, attributes: Mapping[str, Value] | None = None) -> None:
        if self._events is None:
            self._events = []
        self._events.append((name, time.time_ns(), dict(attributes) if attributes else {}))

    def fail(self, error: BaseException | str) -> None:
        if isinstance(error, BaseException):
            self.event("exception", {"exception.type": type(error).__name__,
                                     "exception.message": str(error)[:1000]})  # fmt: skip
            self._error = type(error).__name__
        else:
            self._error = error[:200]

    def end(self) -> None:
        self._recorder.add(
            (self._name, self._kind, self.trace_id, self.span_id, self._parent,
             self._start, time.time_ns(), self._attributes, self._error,
             tuple(self._events) if self._events else (), self._links)
        )  # fmt: skip


_ZERO_SPAN = "0" * 16


def _new_span_id() -> str:
    """A random, valid (not all-zero) span id as 16 hex digits (the SDK's generator's
    source: ``os.urandom`` is a system call, which gives the GIL away)."""
    while (found := f"{random.getrandbits(64):016x}") == _ZERO_SPAN:
        continue  # one chance in 2**64
    return found
