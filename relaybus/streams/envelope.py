"""relaybus's envelope headers on records a stream processor sends, and reading them."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

from relaybus.message import rfc3339
from relaybus.tracing import Span, Tracer, Value
from relaybus.tracing.w3c import TRACEPARENT, TRACESTATE

log = logging.getLogger(__name__)

_P = ParamSpec("_P")
_R = TypeVar("_R")


def skips_unforeseen(reader: Callable[_P, _R | None]) -> Callable[_P, _R | None]:
    """Make a faust agent's record reader total: whatever it raises is the record's
    fault, so it is logged (with its traceback: it names a check we miss) and the
    record is skipped (None) instead of crashing the agent on a record anyone with
    produce rights can write again after every restart."""

    @functools.wraps(reader)
    def total(*args: _P.args, **kwargs: _P.kwargs) -> _R | None:
        try:
            return reader(*args, **kwargs)
        except Exception:  # the record's fault: logged and skipped, see above
            log.warning("%s: skipping a record it cannot read", reader.__name__, exc_info=True)
            return None

    return total


def record_key(key: object) -> str | None:
    """A record's key as text, or None (absent, or not UTF-8: never ours)."""
    if not isinstance(key, bytes | bytearray):
        return None
    try:
        return bytes(key).decode()
    except UnicodeDecodeError:
        return None


def envelope(
    message_type: str,
    key: str,
    message_id: str,
    causation: str | None,
    aggregate_type: str = "saga",
    occurred_at: str | None = None,
) -> list[tuple[str, bytes]]:
    """The envelope headers (DESIGN §2) of a record a processor sends: the services'
    ``ConsumerApp`` workers decode it like any relayed event. ``occurred_at``
    (RFC 3339) defaults to now; a batch processor passes one for the whole batch."""
    return EnvelopeTemplate(message_type, aggregate_type, occurred_at).headers(
        key, message_id, causation
    )


class EnvelopeTemplate:
    """The envelope headers that many records of one batch share (type, aggregate
    type, time), encoded once; ``headers`` adds each record's own (id, key, cause).
    A hot loop's way to write ``envelope``: the same headers, in the same order."""

    def __init__(
        self, message_type: str, aggregate_type: str = "saga", occurred_at: str | None = None
    ) -> None:
        at = occurred_at or rfc3339(datetime.now(UTC))
        self._type = ("type", message_type.encode())
        self._aggregate_type = ("aggregatetype", aggregate_type.encode())
        self._tail = (
            ("occurred_at", at.encode()),
            ("content-type", b"application/json"),
            ("schema_version", b"1"),
        )

    def headers(self, key: str, message_id: str, causation: str | None) -> list[tuple[str, bytes]]:
        """The headers of one record: ``id``, …, ``causation_id`` (when given) last."""
        out = [
            ("id", message_id.encode()),
            self._type,
            self._aggregate_type,
            ("aggregateid", key.encode()),
            *self._tail,
        ]
        if causation:
            out.append(("causation_id", causation.encode()))
        return out


def header(headers: Any, name: str) -> str | None:
    """A header's text value from faust's headers (a mapping or a list of pairs);
    None if absent or not UTF-8."""
    pairs = headers.items() if hasattr(headers, "items") else (headers or ())
    for key, value in pairs:
        if key == name and isinstance(value, bytes | bytearray):
            try:
                return bytes(value).decode()
            except UnicodeDecodeError:
                return None
    return None


def trace_carrier(headers: Any) -> dict[str, str]:
    """The W3C trace headers of a faust record, as a carrier for ``Tracer`` (values are
    checked when read: ``relaybus.tracing.w3c``)."""
    carrier: dict[str, str] = {}
    for name in (TRACEPARENT, TRACESTATE):
        value = header(headers, name)
        if value is not None:
            carrier[name] = value
    return carrier


def traced_headers(
    headers: list[tuple[str, bytes]], traceparent: str | None
) -> list[tuple[str, bytes]]:
    """``headers`` carrying ``traceparent`` (none kept from before) when there is one."""
    if traceparent is None:
        return headers
    return [*(h for h in headers if h[0] != TRACEPARENT), (TRACEPARENT, traceparent.encode())]


def record_span(
    traced: Tracer, name: str, headers: Any, attributes: Mapping[str, Value]
) -> AbstractContextManager[Span]:
    """The span of a faust agent's handling of one record: a child of the context the
    record carries, linked to it (a new trace when it carries none or a bad one)."""
    carrier = trace_carrier(headers)
    return traced.span(
        name[:120], kind="consumer", parent=carrier, links=[(carrier, {})], attributes=attributes
    )
