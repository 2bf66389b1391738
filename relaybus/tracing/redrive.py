"""Spans of operator redrives: a replayed or redriven message starts a new trace that
*links* to the original message's (its own trace stays whole; the replay is a new cause).

``relaybus dlq replay``, ``relaybus replay --to-topic [--reprocess]`` and the console's
replay send a message that was sent before. Its span is a new root (``producer``) with
a link to the context the original carried, the audit row's id as
``relaybus.audit.id``; the message leaves with the new span's ``traceparent`` (and no
``tracestate`` of the original), so its consumers' spans join the replay's trace.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from relaybus.tracing import tracer
from relaybus.tracing.w3c import TRACEPARENT, TRACESTATE

_TRACE_HEADERS = (TRACEPARENT, TRACESTATE)


def redrive_traceparent(
    original: Mapping[str, str],
    *,
    action: str,
    destination: str,
    audit_id: int | None,
    message_id: str | None,
) -> str | None:
    """Start and end the replay span of one message whose original headers are
    ``original``; its ``traceparent`` (None when tracing is off)."""
    traced = tracer()
    if not traced.enabled:
        return None
    attributes: dict[str, str | int] = {
        "messaging.operation.type": "send",
        "messaging.destination.name": destination[:255],
        "relaybus.replay.action": action,
    }
    if audit_id is not None:
        attributes["relaybus.audit.id"] = audit_id
    if message_id:
        attributes["messaging.message.id"] = message_id[:64]
    span = traced.start(
        f"{action} {destination}"[:120],
        kind="producer",
        parent={},  # a new trace: the replay is its own cause
        links=[(original, {"relaybus.link": "original"})],
        attributes=attributes,
    )
    span.end()
    return span.traceparent


def redriven_headers(
    headers: Mapping[str, str],
    *,
    action: str,
    destination: str,
    audit_id: int | None,
) -> dict[str, str]:
    """``headers`` for the replayed copy: the original's unless tracing is on, then
    with the replay span's ``traceparent`` instead of the original's trace headers."""
    new = redrive_traceparent(
        headers,
        action=action,
        destination=destination,
        audit_id=audit_id,
        message_id=headers.get("id"),
    )
    if new is None:
        return dict(headers)
    return {**{k: v for k, v in headers.items() if k not in _TRACE_HEADERS}, TRACEPARENT: new}


def redriven_pairs(
    headers: Sequence[tuple[str, bytes]],
    *,
    action: str,
    destination: str,
    audit_id: int | None,
) -> list[tuple[str, bytes]]:
    """``redriven_headers`` for Kafka record headers (name, bytes) pairs."""
    carrier: dict[str, str] = {}
    for name, value in headers:
        if name in (*_TRACE_HEADERS, "id") and name not in carrier and len(value) <= 1024:
            carrier[name] = value.decode("utf-8", "replace")
    new = redrive_traceparent(
        carrier,
        action=action,
        destination=destination,
        audit_id=audit_id,
        message_id=carrier.get("id"),
    )
    if new is None:
        return list(headers)
    return [(n, v) for n, v in headers if n not in _TRACE_HEADERS] + [(TRACEPARENT, new.encode())]
