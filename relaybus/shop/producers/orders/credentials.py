"""Who calls the orders API: per-customer API keys, issued by an operator.

A key is ``rbk_<key id>_<secret>``: the id (public, 16 hex digits) finds the row, the
secret (32 random bytes, base64url) proves possession. Only the secret's SHA-256 is
stored (a random 256-bit secret needs no slow hash: there is nothing to guess), and
compared in constant time. The row says which customer the key acts for and whether
that customer is a VIP: the request body names neither (issue 31 §3).

``ApiKeys.authenticate`` remembers a verified key for ``cache_seconds`` (a flash sale
asks once per request): a revoked key stops working within that time. ``refresh``
loads every live key in one query (the orders API does it at start and every half of
``cache_seconds``): in a flash sale each customer's first request would otherwise be
one lookup on a database already short of time, and a shed request (429) waited for it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

PREFIX = "rbk"
_TOKEN = re.compile(r"rbk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")

_INSERT = text(
    "INSERT INTO orders.api_keys (key_id, customer, vip, secret_sha256) "
    "VALUES (:key_id, :customer, :vip, :digest)"
)
_LOOKUP = text(
    "SELECT customer, vip, secret_sha256 FROM orders.api_keys "
    "WHERE key_id = :key_id AND revoked_at IS NULL"
)
_DIRECTORY = text(
    "SELECT key_id, customer, vip, secret_sha256 FROM orders.api_keys "
    "WHERE revoked_at IS NULL ORDER BY created_at DESC LIMIT :limit"
)
_REVOKE = text(
    "UPDATE orders.api_keys SET revoked_at = now() "
    "WHERE key_id = :key_id AND revoked_at IS NULL RETURNING customer"
)
_LIST = text(
    "SELECT key_id, customer, vip, created_at, revoked_at FROM orders.api_keys "
    "WHERE (CAST(:customer AS text) IS NULL OR customer = :customer) "
    "ORDER BY created_at DESC LIMIT :limit"
)


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: the customer its key acts for, and the VIP flag the
    operator gave that key."""

    customer: str
    vip: bool
    key_id: str


@dataclass(frozen=True)
class IssuedKey:
    """A key as issued: ``token`` is shown once and never stored."""

    key_id: str
    customer: str
    vip: bool
    token: str


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def parse_token(value: str | None) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed token, else None (no database question)."""
    if not value or len(value) > 80:
        return None
    found = _TOKEN.fullmatch(value)
    return (found.group(1), found.group(2)) if found else None


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


async def issue_key(session: AsyncSession, customer: str, *, vip: bool = False) -> IssuedKey:
    """A new key for ``customer`` (in the caller's transaction)."""
    if not 1 <= len(customer) <= 128 or not customer.isprintable():
        raise ValueError("a customer id is 1..128 printable characters")
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    await session.execute(
        _INSERT, {"key_id": key_id, "customer": customer, "vip": vip, "digest": _digest(secret)}
    )
    return IssuedKey(key_id, customer, vip, f"{PREFIX}_{key_id}_{secret}")


async def issue_keys(session: AsyncSession, customers: list[str]) -> dict[str, str]:
    """A new key for each of ``customers`` (one statement): customer -> key."""
    issued = []
    for customer in customers:
        if not 1 <= len(customer) <= 128 or not customer.isprintable():
            raise ValueError("a customer id is 1..128 printable characters")
        issued.append((customer, secrets.token_hex(8), secrets.token_urlsafe(32)))
    if issued:
        await session.execute(
            _INSERT,
            [
                {"key_id": k, "customer": c, "vip": False, "digest": _digest(secret)}
                for c, k, secret in issued
            ],
        )
    return {c: f"{PREFIX}_{k}_{secret}" for c, k, secret in issued}


async def revoke_key(session: AsyncSession, key_id: str) -> str | None:
    """Revoke a key; the customer it was for, or None if no live key has that id."""
    customer = await session.scalar(_REVOKE, {"key_id": key_id})
    return None if customer is None else str(customer)


async def list_keys(
    session: AsyncSession, customer: str | None = None, limit: int = 200
) -> list[dict[str, Any]]:
    """The newest keys (never a secret): id, customer, vip, created, revoked."""
    rows = await session.execute(_LIST, {"customer": customer, "limit": limit})
    return [
        {
            "key_id": r.key_id,
            "customer": r.customer,
            "vip": r.vip,
            "created_at": r.created_at.isoformat(),
            "revoked_at": r.revoked_at.isoformat() if r.revoked_at else None,
        }
        for r in rows
    ]


class ApiKeys:
    """Checks tokens against ``orders.api_keys``; verified ones are remembered for
    ``cache_seconds`` (at most ``cache_size`` of them). Unknown or wrong tokens are
    never cached: each costs one indexed lookup."""

    def __init__(
        self,
        engine: AsyncEngine,
        cache_seconds: float = 30.0,
        cache_size: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.cache_seconds = cache_seconds
        self.cache_size = cache_size
        self.clock = clock
        # key id -> (caller, secret digest, valid until); least recently used first.
        self._known: OrderedDict[str, tuple[Caller, bytes, float]] = OrderedDict()

    async def authenticate(self, token: str | None) -> Caller | None:
        """The caller a token stands for, or None (malformed, unknown, revoked, wrong)."""
        parsed = parse_token(token)
        if parsed is None:
            return None
        key_id, secret = parsed
        digest = _digest(secret)
        now = self.clock()
        known = self._known.get(key_id)
        if known is not None and known[2] > now:
            self._known.move_to_end(key_id)
            caller, stored, _ = known
            return caller if hmac.compare_digest(stored, digest) else None
        async with self.engine.connect() as conn:
            row = (await conn.execute(_LOOKUP, {"key_id": key_id})).one_or_none()
        if row is None or not hmac.compare_digest(bytes(row.secret_sha256), digest):
            return None
        caller = Caller(row.customer, bool(row.vip), key_id)
        self._known[key_id] = (caller, bytes(row.secret_sha256), now + self.cache_seconds)
        self._known.move_to_end(key_id)
        while len(self._known) > self.cache_size:
            self._known.popitem(last=False)
        return caller

    async def refresh(self) -> int:
        """Replace what is remembered with every live key (the newest ``cache_size``),
        read in one query, each trusted for ``cache_seconds`` from now: a key revoked
        since is forgotten at once, a key issued after the query costs one lookup when
        first used. Returns how many keys are known. Raises what the database raises
        (the caller keeps what it knew)."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(_DIRECTORY, {"limit": self.cache_size})).all()
        until = self.clock() + self.cache_seconds
        known: OrderedDict[str, tuple[Caller, bytes, float]] = OrderedDict()
        for row in reversed(rows):  # the newest last: the last to be evicted
            caller = Caller(row.customer, bool(row.vip), row.key_id)
            known[row.key_id] = (caller, bytes(row.secret_sha256), until)
        self._known = known
        return len(known)
