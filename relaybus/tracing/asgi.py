"""The HTTP server span of an ASGI app (pure ASGI: no web framework imported).

Every request gets a ``server`` span, current while the app handles it, so what the
request writes to an outbox starts its trace there. A client's W3C ``traceparent`` is
honoured only when ``trust_client_context`` says so (a setting, off by default): an
untrusted client must not graft its requests onto other traces nor pick their
sampling. The span names the route template when the framework has matched one
(``POST /orders``), never the raw path with its ids.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from relaybus.tracing import tracer
from relaybus.tracing.w3c import TRACEPARENT, TRACESTATE

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def _client_context(scope: Scope) -> dict[str, str]:
    carrier: dict[str, str] = {}
    for name, value in scope.get("headers") or ():
        text = bytes(name).decode("latin-1").lower()
        if text in (TRACEPARENT, TRACESTATE) and text not in carrier:
            carrier[text] = bytes(value[:1024]).decode("latin-1")
    return carrier


class TraceRequests:
    """ASGI middleware: one ``server`` span per HTTP request (tracing on only)."""

    def __init__(self, app: App, *, trust_client_context: bool = False) -> None:
        self.app = app
        self.trust_client_context = trust_client_context

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        traced = tracer()
        if scope["type"] != "http" or not traced.enabled:
            await self.app(scope, receive, send)
            return
        method = str(scope.get("method", "GET"))
        status: list[int] = []

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
            await send(message)

        with traced.span(
            f"{method} {scope.get('path', '')}"[:120],
            kind="server",
            # None: the current context (none in a server: a new trace).
            parent=_client_context(scope) if self.trust_client_context else {},
            attributes={
                "http.request.method": method,
                "url.path": str(scope.get("path", ""))[:200],
            },
        ) as span:
            try:
                await self.app(scope, receive, send_status)
            finally:
                route = scope.get("route")
                template = getattr(route, "path", None)
                if isinstance(template, str):
                    span.set("http.route", template)
                if status:
                    span.set("http.response.status_code", status[0])
                    if status[0] >= 500:
                        span.fail(f"HTTP {status[0]}")
