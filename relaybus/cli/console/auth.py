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
from collections.abc import Callable
from dataclasses import dataclass, field

from streams.ratelimit.sliding_window import SlidingLog

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
    a request end a session; ``lifetime`` ends it in any case."""

    idle: float
    lifetime: float = 8 * 3600.0
    clock: Callable[[], float] = time.monotonic
    max_sessions: int = 10_000
    _by_id: dict[str, Session] = field(default_factory=dict)

    def new(self, user: str | None) -> tuple[str, Session]:
        """A fresh session (a new id: login never reuses a pre-login id). Beyond
        ``max_sessions`` live ones, the oldest are dropped (anyone can open /login)."""
        self._sweep()
        while len(self._by_id) >= self.max_sessions:
            del self._by_id[next(iter(self._by_id))]
        now = self.clock()
        sid = secrets.token_urlsafe(32)
        session = Session(user, secrets.token_urlsafe(32), now + self.idle, now + self.lifetime)
        self._by_id[sid] = session
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        """The live session for ``sid`` (renewed), or None if unknown or expired."""
        if not sid:
            return None
        session = self._by_id.get(sid)
        if session is None:
            return None
        now = self.clock()
        if now >= session.expires or now >= session.hard_expiry:
            del self._by_id[sid]
            return None
        session.expires = min(now + self.idle, session.hard_expiry)
        return session

    def end(self, sid: str | None) -> None:
        if sid:
            self._by_id.pop(sid, None)

    def _sweep(self) -> None:
        now = self.clock()
        for sid in [s for s, v in self._by_id.items() if now >= min(v.expires, v.hard_expiry)]:
            del self._by_id[sid]


def csrf_ok(session: Session, submitted: str | None) -> bool:
    """The form's token is this session's (constant-time comparison)."""
    return submitted is not None and hmac.compare_digest(session.csrf, submitted)


@dataclass
class LoginThrottle:
    """At most ``limit`` login attempts per client address per ``window`` seconds
    (an exact sliding log per address): guessing the password costs time."""

    limit: int = 10
    window: float = 60.0
    clock: Callable[[], float] = time.monotonic
    _logs: dict[str, SlidingLog] = field(default_factory=dict)

    def attempt(self, client: str) -> float:
        """0 if this attempt may go ahead, else seconds until one may."""
        if len(self._logs) > 10_000:  # addresses seen long ago: forget them
            self._logs.clear()
        log = self._logs.setdefault(client, SlidingLog(self.limit, self.window))
        return log.try_acquire(self.clock()).retry_after
