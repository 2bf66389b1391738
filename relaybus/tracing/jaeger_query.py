"""Reading traces back from Jaeger's query API (``/api/services``, ``/api/traces``):
what ``relaybus trace ID`` and the console's trace page show.

A message id is found by its spans' ``messaging.message.id``, an order id by the
orders API's ``relaybus.order.id``; Jaeger's search needs a service, so every service
it knows is asked (a handful in a relaybus system). Attribute values came from the
wire: callers render them as text (the console escapes, the terminal prints plain).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

# Attributes a timeline row shows (the rest are in Jaeger), with their short labels.
SHOWN = {
    "relaybus.outcome": "outcome",
    "relaybus.dlq.reason": "dlq-reason",
    "relaybus.attempt": "attempt",
    "relaybus.breaker": "breaker",
    "relaybus.decision": "decision",
    "relaybus.saga.step": "saga",
    "relaybus.outbox.wait_ms": "outbox-wait-ms",
    "relaybus.audit.id": "audit",
    "relaybus.replay.action": "replay",
    "relaybus.order.id": "order",
    "messaging.destination.name": "to",
    "messaging.message.id": "id",
    "http.route": "route",
    "http.response.status_code": "status",
}
SEARCH_TAGS = ("messaging.message.id", "relaybus.order.id")


class TraceStoreError(Exception):
    """Jaeger could not be asked (unreachable, refused, not JSON): one line to show."""


@dataclass(frozen=True)
class Link:
    trace_id: str
    span_id: str


@dataclass
class SpanRow:
    """One span of a timeline: when it began (µs after the trace began), how long it
    waited after its parent ended (a hop's queueing) and how long it worked."""

    span_id: str
    parent_id: str | None
    service: str
    name: str
    start_us: int
    duration_us: int
    attributes: dict[str, str]
    links: list[Link] = field(default_factory=list)
    depth: int = 0
    wait_us: int = 0
    failed: bool = False


@dataclass
class TraceView:
    trace_id: str
    spans: list[SpanRow]
    link: str  # the trace in Jaeger's UI

    def facts(self, span: SpanRow) -> list[tuple[str, str]]:
        """A span's shown attributes as (short label, value)."""
        return [(SHOWN[k], v) for k, v in span.attributes.items() if k in SHOWN]

    @property
    def services(self) -> list[str]:
        return sorted({s.service for s in self.spans})

    @property
    def duration_us(self) -> int:
        if not self.spans:
            return 0
        return max(s.start_us + s.duration_us for s in self.spans)


class JaegerQuery:
    """A client of one Jaeger query API (``base`` like ``http://127.0.0.1:16686``)."""

    def __init__(self, base: str, timeout: float = 10.0) -> None:
        self.base = base.rstrip("/")
        self.timeout = timeout

    async def _get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                response = await client.get(f"{self.base}{path}", params=params)
        except httpx.HTTPError as err:
            raise TraceStoreError(f"Jaeger at {self.base} is unreachable: {err}") from None
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise TraceStoreError(f"Jaeger answered {response.status_code} for {path}")
        try:
            return response.json()
        except ValueError:
            raise TraceStoreError(f"Jaeger's answer to {path} is not JSON") from None

    async def services(self) -> list[str]:
        found = await self._get("/api/services")
        return sorted(str(s) for s in (found or {}).get("data") or [])

    async def find(self, ident: str, lookback: str = "2d") -> list[str]:
        """Ids of the traces with a span tagged with ``ident`` as a message id or an
        order id, newest first."""
        found: dict[str, int] = {}
        for service in await self.services():
            for tag in SEARCH_TAGS:
                answer = await self._get(
                    "/api/traces",
                    {
                        "service": service,
                        "tags": json.dumps({tag: ident}),
                        "lookback": lookback,
                        "limit": "20",
                    },
                )
                for trace in (answer or {}).get("data") or []:
                    starts = [int(s.get("startTime", 0)) for s in trace.get("spans", [])]
                    found[str(trace["traceID"])] = min(starts, default=0)
        return sorted(found, key=lambda t: -found[t])

    async def trace(self, trace_id: str) -> TraceView | None:
        """The trace, its spans in timeline order (a parent before its children)."""
        if not all(c in "0123456789abcdef" for c in trace_id) or not 1 <= len(trace_id) <= 32:
            raise TraceStoreError(f"{trace_id[:40]!r} is not a trace id (hex)")
        answer = await self._get(f"/api/traces/{trace_id}")
        data = (answer or {}).get("data") or []
        if not data:
            return None
        return timeline(data[0], f"{self.base}/trace/{trace_id}")


def _tags(tags: list[dict[str, Any]]) -> dict[str, str]:
    return {str(t.get("key")): str(t.get("value"))[:300] for t in tags or []}


def timeline(trace: dict[str, Any], link: str) -> TraceView:
    """Jaeger's JSON of one trace as a ``TraceView``: parents before children, siblings
    by start time, each span's depth and its wait after its parent's end."""
    processes = {k: str(v.get("serviceName", "?")) for k, v in trace.get("processes", {}).items()}
    trace_id = str(trace.get("traceID", ""))
    rows: dict[str, SpanRow] = {}
    for span in trace.get("spans", []):
        parent = None
        follows = None
        links: list[Link] = []
        for ref in span.get("references") or []:
            ref_trace, ref_span = str(ref.get("traceID", "")), str(ref.get("spanID", ""))
            if ref.get("refType") == "CHILD_OF" and ref_trace == trace_id and parent is None:
                parent = ref_span
                continue
            links.append(Link(ref_trace, ref_span))
            if ref_trace == trace_id and follows is None:
                follows = ref_span
        # A consumer span's parent is also its link (the span that sent its message):
        # Jaeger keeps that one reference, as FOLLOWS_FROM.
        parent = parent or follows
        tags = _tags(span.get("tags", []))
        rows[str(span["spanID"])] = SpanRow(
            span_id=str(span["spanID"]),
            parent_id=parent,
            service=processes.get(str(span.get("processID")), "?"),
            name=str(span.get("operationName", ""))[:200],
            start_us=int(span.get("startTime", 0)),
            duration_us=int(span.get("duration", 0)),
            attributes={k: v for k, v in tags.items() if k in SHOWN},
            links=links,
            failed=tags.get("otel.status_code") == "ERROR" or tags.get("error") == "true",
        )
    began = min((r.start_us for r in rows.values()), default=0)
    children: dict[str | None, list[SpanRow]] = {}
    for row in rows.values():
        parent_id = row.parent_id if row.parent_id in rows else None
        children.setdefault(parent_id, []).append(row)
    ordered: list[SpanRow] = []

    def visit(parent: SpanRow | None, depth: int) -> None:
        for row in sorted(children.get(parent.span_id if parent else None, []),
                          key=lambda r: r.start_us):  # fmt: skip
            row.depth = depth
            if parent is not None:
                row.wait_us = max(0, row.start_us - (parent.start_us + parent.duration_us))
            ordered.append(row)
            visit(row, depth + 1)

    visit(None, 0)
    for row in ordered:
        row.start_us -= began
    return TraceView(trace_id, ordered, link)
