"""The console's authentication: a scrypt password hash from settings, server-side
sessions that expire, a CSRF token per session, and a throttle on login attempts.

Nothing here logs or returns a password or a token: the hash is the only form in
which the secret is stored, and sessions are random ids that mean nothing outside
this process (a restart signs everyone out).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from relaybus.streams.ratelimit.sliding_window import SlidingLog

# scrypt's cost (N=2^15, r=8, p=1: ~32 MiB and ~0.1 s per check): slow for a guesser,
# fine for a login form.
_N, _R, _P = 2**15, 8, 1
_MAXMEM = 64 * 1024 * 1024
_PREFIX = "scrypt"


class BadPasswordHash(ValueError):
    """The configured hash is not one ``hash_password`` makes."""


def hash_password(password: str, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$<salt>$<hash>`` (base64): what ``RELAYBUS_CONSOLE_PASSWORD_HASH`` holds."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, maxmem=_MAXMEM)
    encoded = (base64.b64encode(salt).decode(), base64.b64encode(digest).decode())
    return f"{_PREFIX}${_N}${_R}${_P}${encoded[0]}${encoded[1]}"


@dataclass(frozen=True)
class PasswordHash:
    """A parsed hash; ``matches`` compares in constant time."""

    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    @classmethod
    def parse(cls, text: str) -> PasswordHash:
        parts = text.split("$")
        if len(parts) != 6 or parts[0] != _PREFIX:
            raise BadPasswordHash(
                "not a relaybus console hash (make one: relaybus console --hash-password)"
            )
        try:
            n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
            salt, digest = (
                base64.b64decode(parts[4], validate=True),
                base64.b64decode(parts[5], validate=True),
            )
        except ValueError:
            raise BadPasswordHash("the hash's fields are not numbers and base64") from None
        if not (2 <= n <= 2**20 and 1 <= r <= 32 and 1 <= p <= 16) or len(digest) < 32:
            raise BadPasswordHash("the hash's cost parameters are out of range")
        return cls(n, r, p, salt, digest)

    def matches(self, password: str) -> bool:
        tried = hashlib.scrypt(
            password.encode(), salt=self.salt, n=self.n, r=self.r, p=self.p,
            maxmem=_MAXMEM, dklen=len(self.digest),
        )  # fmt: skip
        return hmac.compare_digest(tried, self.digest)


@dataclass
class Session:
    """One browser's session: who (None before login), its CSRF token, and when it
    expires (idle timeout, renewed on use, never past ``hard_expiry``)."""

    user: str | None
    csrf: str
    expires: float
    hard_expiry: float
    flash: list[str] = field(default_factory=list)  # one-time notes for the next page


@dataclass
class Sessions:
    """Server-side sessions keyed by a random cookie value. ``idle`` seconds without
    a request end a session; ``lifetime`` ends it in any case.

    Anonymous sessions (opened by anyone who loads ``/login``) and signed-in ones are
    kept apart, each with its own cap: at ``max_anonymous`` the oldest anonymous
    session gives way, so a flood of anonymous requests never signs an operator out.
    Signed-in sessions need the password (throttled); at ``max_signed_in`` the oldest
    of them gives way.
    """

    idle: float
    lifetime: float = 8 * 3600.0
    clock: Callable[[], float] = time.monotonic
    max_anonymous: int = 10_000
    max_signed_in: int = 1_000
    _anonymous: dict[str, Session] = field(default_factory=dict)
    _signed_in: dict[str, Session] = field(default_factory=dict)

    def new(self, user: str | None) -> tuple[str, Session]:
        """A fresh session (a new id: login never reuses a pre-login id)."""
        pool, cap = (
            (self._anonymous, self.max_anonymous)
            if user is None
            else (self._signed_in, self.max_signed_in)
        )
        self._sweep(pool)
        while len(pool) >= cap:
            del pool[next(iter(pool))]  # insertion order: the oldest
        now = self.clock()
        sid = secrets.token_urlsafe(32)
        session = Session(user, secrets.token_urlsafe(32), now + self.idle, now + self.lifetime)
        pool[sid] = session
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        """The live session for ``sid`` (renewed), or None if unknown or expired."""
        if not sid or len(sid) > 64:
            return None
        for pool in (self._signed_in, self._anonymous):
            session = pool.get(sid)
            if session is None:
                continue
            now = self.clock()
            if now >= session.expires or now >= session.hard_expiry:
                del pool[sid]
                return None
            session.expires = min(now + self.idle, session.hard_expiry)
            return session
        return None

    def end(self, sid: str | None) -> None:
        if sid:
            self._anonymous.pop(sid, None)
            self._signed_in.pop(sid, None)

    def counts(self) -> tuple[int, int]:
        """(anonymous, signed in) sessions held, expired ones included until swept."""
        return len(self._anonymous), len(self._signed_in)

    def _sweep(self, pool: dict[str, Session]) -> None:
        now = self.clock()
        for sid in [s for s, v in pool.items() if now >= min(v.expires, v.hard_expiry)]:
            del pool[sid]


def csrf_ok(session: Session, submitted: str | None) -> bool:
    """The form's token is this session's (constant-time, compared as UTF-8 bytes:
    ``compare_digest`` refuses non-ASCII text, and a form may carry any)."""
    if submitted is None:
        return False
    return hmac.compare_digest(
        session.csrf.encode(), submitted.encode("utf-8", errors="surrogateescape")
    )


@dataclass
class LoginThrottle:
    """At most ``limit`` login attempts per client per ``window`` seconds (an exact
    sliding log per ``relaybus.client_address.limit_key``): guessing the password
    costs time.

    State is bounded without ever being reset: at most ``max_clients`` logs, least
    recently used first out, and a log whose window has passed holds nothing worth
    keeping, so those go first. Forgetting a client that is still inside its window
    needs ``max_clients`` other addresses (or IPv6 /64s) to try in the meantime.
    """

    limit: int = 10
    window: float = 60.0
    clock: Callable[[], float] = time.monotonic
    max_clients: int = 10_000
    _logs: OrderedDict[str, tuple[SlidingLog, float]] = field(default_factory=OrderedDict)

    def attempt(self, client: str) -> float:
        """0 if this attempt may go ahead, else seconds until one may."""
        now = self.clock()
        entry = self._logs.pop(client, None)
        if entry is None:
            self._make_room(now)
            entry = (SlidingLog(self.limit, self.window), now)
        log = entry[0]
        wait = log.try_acquire(now).retry_after
        self._logs[client] = (log, now)  # most recently used last
        return wait

    def _make_room(self, now: float) -> None:
        if len(self._logs) < self.max_clients:
            return
        stale = [c for c, (_, last) in self._logs.items() if now - last >= self.window]
        for client in stale:
            del self._logs[client]
        while len(self._logs) >= self.max_clients:
            self._logs.popitem(last=False)

    def __len__(self) -> int:
        return len(self._logs)
