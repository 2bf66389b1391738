"""The console's gate, in front of every route: authentication, CSRF, same-origin
and security headers. Default deny: a route added later is protected without saying
so, because the gate knows only which paths are public (``PUBLIC``), not which are
private.

- A ``Host`` header that is not one the console is reached by (its bind address,
  loopback names on loopback, ``RELAYBUS_CONSOLE_ALLOWED_HOSTS``) is 400 before
  anything else: a DNS-rebinding page reaches the port under a name of its own.
- No session with a user: a page (GET) redirects to ``/login``; anything else is 401.
- Every request other than GET/HEAD must be an urlencoded form (bounded size) whose
  ``csrf`` field is the session's token, and must not come from another site
  (``Origin`` / ``Sec-Fetch-Site``): 403 otherwise. The login form is a POST too, so
  a pre-login session carries its token.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import CookieError, SimpleCookie
from typing import Any

from relaybus.cli.console.auth import Session, Sessions, csrf_ok

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

COOKIE = "relaybus_console"
PUBLIC = frozenset({"/login"})
SAFE_METHODS = frozenset({"GET", "HEAD"})
MAX_FORM = 256 * 1024
HEADERS = [
    (b"content-security-policy",
     b"default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; "
     b"frame-ancestors 'none'; base-uri 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),  # "no-referrer" makes browsers send Origin: null
    (b"cache-control", b"no-store"),
]  # fmt: skip


def session_id(scope: Scope) -> str | None:
    """The session cookie's value from the request headers, if any."""
    for name, value in scope.get("headers", []):
        if name == b"cookie":
            cookie: SimpleCookie = SimpleCookie()
            try:
                cookie.load(value.decode("latin-1"))
            except CookieError:  # a malformed cookie header carries no session
                return None
            morsel = cookie.get(COOKIE)
            return morsel.value if morsel is not None else None
    return None


class Guard:
    """ASGI middleware: see the module docstring. Puts the live ``Session`` in
    ``scope["state"]["session"]`` for the routes."""

    def __init__(self, app: ASGIApp, sessions: Sessions, hosts: frozenset[str]) -> None:
        self.app = app
        self.sessions = sessions
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_headers(send)
        if _host(scope) not in self.hosts:
            await _respond(send, 400, b"unknown Host: reach the console by its own address")
            return
        path: str = scope["path"]
        method: str = scope["method"]
        session = self.sessions.get(session_id(scope))
        public = path in PUBLIC
        if not public and (session is None or session.user is None):
            if method in SAFE_METHODS and not path.endswith(".json"):
                await _respond(send, 303, b"", [(b"location", b"/login")])
            else:
                await _respond(send, 401, b"sign in first")
            return
        if method not in SAFE_METHODS:
            checked = await self._checked_form(scope, receive, send, session)
            if checked is None:
                return
            receive = checked
        scope.setdefault("state", {})["session"] = session
        await self.app(scope, receive, send)

    async def _checked_form(
        self, scope: Scope, receive: Receive, send: Send, session: Session | None
    ) -> Receive | None:
        """The request's body replayed to the app if it passes; None once refused."""
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if headers.get(b"sec-fetch-site", b"same-origin") not in (b"same-origin", b"none"):
            await _respond(send, 403, b"cross-site request refused")
            return None
        origin = headers.get(b"origin")
        host = headers.get(b"host", b"")
        if origin is not None and _netloc(origin) != host.decode("latin-1"):
            await _respond(send, 403, b"cross-origin request refused")
            return None
        if not headers.get(b"content-type", b"").startswith(b"application/x-www-form-urlencoded"):
            await _respond(send, 415, b"send a form (application/x-www-form-urlencoded)")
            return None
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > MAX_FORM:
                await _respond(send, 413, b"form too large")
                return None
            if not message.get("more_body", False):
                break
        token = urllib.parse.parse_qs(body.decode("latin-1")).get("csrf", [None])[0]
        if session is None or not csrf_ok(session, token):
            await _respond(send, 403, b"the form's CSRF token is missing or stale: reload the page")
            return None
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replay


def allowed_hosts(bind_host: str, port: int, extra: list[str]) -> frozenset[str]:
    """The ``Host`` values the console answers: its bind address, the loopback names
    when it is bound to loopback, and ``extra`` (RELAYBUS_CONSOLE_ALLOWED_HOSTS); each
    with and without ``:port``. A wildcard bind (0.0.0.0, ::) adds no name of its own."""
    names = {h.lower() for h in extra}
    if bind_host in ("127.0.0.1", "localhost", "::1"):
        names |= {"127.0.0.1", "localhost", "[::1]"}
    elif bind_host not in ("0.0.0.0", "::", ""):
        names.add(f"[{bind_host}]" if ":" in bind_host else bind_host.lower())
    return frozenset(names | {f"{name}:{port}" for name in names})


def _host(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"host":
            return str(value.decode("latin-1").lower())
    return ""


def _netloc(origin: bytes) -> str:
    return urllib.parse.urlsplit(origin.decode("latin-1")).netloc


def _with_headers(send: Send) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), *HEADERS]
        await send(message)

    return sending


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain; charset=utf-8"), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": body})
