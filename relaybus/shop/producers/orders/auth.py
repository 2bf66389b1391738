"""The orders API's gate: every request under its protected paths carries an API key.

ASGI middleware, outermost: a request without a valid key is answered 401 before its
body is read or anything is written, whatever else is wrong with it. The key comes
as ``Authorization: Bearer <key>`` (or ``X-API-Key: <key>``); the ``Caller`` it
stands for is put in ``scope["state"]["caller"]`` for the routes (``caller_of``).
"""

from __future__ import annotations

import json

from fastapi import HTTPException, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from relaybus.shop.producers.orders.credentials import ApiKeys, Caller, bearer

_CHALLENGE = (b"www-authenticate", b'Bearer realm="orders"')


class RequireApiKey:
    """401 (with ``WWW-Authenticate: Bearer``) for a request to one of ``paths`` (or
    below them) without a valid key; other paths (``/healthz``, ``/docs``) pass."""

    def __init__(self, app: ASGIApp, keys: ApiKeys, paths: tuple[str, ...]) -> None:
        self.app = app
        self.keys = keys
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._protected(scope["path"]):
            await self.app(scope, receive, send)
            return
        token = None
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                token = bearer(value.decode("latin-1"))
            elif name == b"x-api-key" and token is None:
                token = value.decode("latin-1").strip()
        caller = await self.keys.authenticate(token)
        if caller is None:
            detail = (
                "send your API key: Authorization: Bearer rbk_…"
                if token is None
                else ("this API key is not valid (unknown, revoked or mistyped)")
            )
            body = json.dumps({"detail": detail}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        _CHALLENGE,
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        scope.setdefault("state", {})["caller"] = caller
        await self.app(scope, receive, send)

    def _protected(self, path: str) -> bool:
        return any(path == p or path.startswith(p + "/") for p in self.paths)


def caller_of(request: Request) -> Caller:
    """The authenticated caller of a request that passed ``RequireApiKey``."""
    caller = request.scope.get("state", {}).get("caller")
    if not isinstance(caller, Caller):  # a route outside the gate's paths: a bug
        raise HTTPException(401, "send your API key")
    return caller
