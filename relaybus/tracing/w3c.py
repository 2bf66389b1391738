"""W3C trace context (``traceparent``, ``tracestate``) read from untrusted headers.

Both headers arrive from the wire (any client can write them), so reading is bounded
and strict: a value that is not exactly a version-00 ``traceparent`` is ignored (the
span starts a new trace), a ``tracestate`` over the spec's bounds is dropped. Nothing
here raises on input, loops over it more than once, or keeps more than 512 characters.
Pure functions, no OpenTelemetry import: usable when tracing is off.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple, TypeGuard

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# version 00: "00-" 32 hex trace id "-" 16 hex span id "-" 2 hex flags = 55 characters
_TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
# The common unsampled value, valid (ids not all zero) in one match: the hot path's.
_UNSAMPLED = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-00")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
# The W3C limits: at most 32 list members; vendors may drop a header over 512 chars.
MAX_TRACESTATE_CHARS = 512
MAX_TRACESTATE_MEMBERS = 32
_MEMBER = re.compile(r"[a-z0-9][_0-9a-z\-*/@]{0,255}=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}")


class TraceContext(NamedTuple):
    """A valid remote span context: ids as lower-case hex, ``sampled`` from the flags
    (a tuple: made for every sampled delivery, where a frozen dataclass costs more)."""

    trace_id: str
    span_id: str
    flags: int
    tracestate: str | None = None

    @property
    def sampled(self) -> bool:
        return bool(self.flags & 1)

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags:02x}"


def parse_traceparent(value: str | None) -> TraceContext | None:
    """The context a ``traceparent`` value names, or None if it is not exactly a valid
    version-00 value (wrong length, upper-case, all-zero ids, other versions)."""
    if value is None or len(value) != 55 or _TRACEPARENT.fullmatch(value) is None:
        return None
    trace_id, span_id = value[3:35], value[36:52]  # fixed places once it matched
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return TraceContext(trace_id, span_id, int(value[53:], 16))


def is_unsampled(value: str | None) -> TypeGuard[str]:
    """True for a valid version-00 ``traceparent`` whose flags are ``00`` (the common
    unsampled value): the hot path's check, without building a ``TraceContext``."""
    return value is not None and len(value) == 55 and _UNSAMPLED.fullmatch(value) is not None


def clean_tracestate(value: str | None) -> str | None:
    """``value`` if it is a well-formed ``tracestate`` within the W3C bounds, else None."""
    if not value or len(value) > MAX_TRACESTATE_CHARS:
        return None
    members = [m.strip() for m in value.split(",") if m.strip()]
    if not members or len(members) > MAX_TRACESTATE_MEMBERS:
        return None
    if not all(_MEMBER.fullmatch(m) for m in members):
        return None
    return ",".join(members)


def read_context(headers: Mapping[str, str] | None) -> TraceContext | None:
    """The trace context carried by ``headers`` (``traceparent`` and, with it, a valid
    ``tracestate``), or None."""
    if not headers:
        return None
    found = parse_traceparent(headers.get(TRACEPARENT))
    if found is None:
        return None
    state = clean_tracestate(headers.get(TRACESTATE))
    return (
        found if state is None else TraceContext(found.trace_id, found.span_id, found.flags, state)
    )
