"""The console's password hash, sessions (expiry, rotation, cap) and login throttle."""

from __future__ import annotations

import pytest

from relaybus.cli.console.auth import (
    BadPasswordHash,
    LoginThrottle,
    PasswordHash,
    Sessions,
    csrf_ok,
    hash_password,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_hash_matches_its_password_only() -> None:
    made = hash_password("correct horse battery")
    assert made.startswith("scrypt$32768$8$1$")
    parsed = PasswordHash.parse(made)
    assert parsed.matches("correct horse battery")
    assert not parsed.matches("correct horse batterY")
    assert hash_password("correct horse battery") != made  # salted


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hunter2",
        "bcrypt$1$2$3$aa$bb",
        "scrypt$x$8$1$AAAA$BBBB",
        "scrypt$32768$8$1$not base64!$BBBB",
        "scrypt$4294967296$8$1$AAAA$" + "A" * 44,
        "scrypt$32768$8$1$AAAA$AAAA",  # a digest too short to mean anything
    ],
)
def test_a_malformed_hash_is_refused_without_echoing_it(text: str) -> None:
    with pytest.raises(BadPasswordHash) as caught:
        PasswordHash.parse(text)
    assert text not in str(caught.value) or not text


def test_sessions_expire_when_idle_and_at_their_lifetime() -> None:
    clock = Clock()
    sessions = Sessions(idle=60, lifetime=150, clock=clock)
    sid, session = sessions.new("operator")
    clock.now += 59
    assert sessions.get(sid) is session  # used: renewed for another 60 s
    clock.now += 59
    assert sessions.get(sid) is session
    clock.now += 31  # 149 s old: still inside its lifetime
    assert sessions.get(sid) is session
    clock.now += 2  # past the lifetime, however busy
    assert sessions.get(sid) is None
    sid2, _ = sessions.new("operator")
    clock.now += 61
    assert sessions.get(sid2) is None  # idle too long
    assert sessions.get(None) is None
    assert sessions.get("made-up") is None


def test_signing_in_gives_a_new_id_and_token() -> None:
    sessions = Sessions(idle=60)
    before, anonymous = sessions.new(None)
    sessions.end(before)
    after, signed_in = sessions.new("operator")
    assert after != before
    assert signed_in.csrf != anonymous.csrf
    assert sessions.get(before) is None
    assert csrf_ok(signed_in, signed_in.csrf)
    assert not csrf_ok(signed_in, anonymous.csrf)
    assert not csrf_ok(signed_in, None)


def test_sessions_are_capped() -> None:
    sessions = Sessions(idle=60, max_anonymous=3)
    ids = [sessions.new(None)[0] for _ in range(5)]
    assert [sessions.get(i) is not None for i in ids] == [False, False, True, True, True]


def test_anonymous_sessions_never_evict_a_signed_in_one() -> None:
    """10 000 anonymous GET /login used to sign every operator out (issue 31 §4)."""
    sessions = Sessions(idle=60, max_anonymous=100, max_signed_in=5)
    operator, _ = sessions.new("operator")
    for _ in range(10_000):
        sessions.new(None)
    assert sessions.get(operator) is not None
    assert sessions.counts() == (100, 1)
    signed = [sessions.new("operator")[0] for _ in range(5)]  # the signed-in cap
    assert sessions.get(operator) is None  # the oldest signed-in one gave way
    assert all(sessions.get(sid) is not None for sid in signed)


def test_a_non_ascii_csrf_value_is_a_mismatch_not_an_error() -> None:
    _, session = Sessions(idle=60).new(None)
    assert not csrf_ok(session, "é" * 43)
    assert not csrf_ok(session, "\udcff")
    assert csrf_ok(session, session.csrf)


def test_login_attempts_are_throttled_per_address() -> None:
    clock = Clock()
    throttle = LoginThrottle(limit=3, window=60, clock=clock)
    assert [throttle.attempt("a") for _ in range(3)] == [0, 0, 0]
    assert throttle.attempt("a") == pytest.approx(60)
    assert throttle.attempt("b") == 0  # another address is not held back
    clock.now += 60
    assert throttle.attempt("a") == 0


def test_the_throttle_is_bounded_and_never_forgets_everyone_at_once() -> None:
    """It used to clear every address once 10 000 had been seen (issue 31 §4)."""
    clock = Clock()
    throttle = LoginThrottle(limit=3, window=60, clock=clock, max_clients=100)
    for _ in range(3):
        throttle.attempt("attacker")
    assert throttle.attempt("attacker") > 0
    for n in range(98):  # the table fills up to its bound, the attacker still held
        throttle.attempt(f"10.0.0.{n}")
        assert throttle.attempt("attacker") > 0
    assert len(throttle) == 99
    clock.now += 61  # stale logs go first when room is needed
    for n in range(500):
        throttle.attempt(f"10.1.{n // 256}.{n % 256}")
        assert len(throttle) <= 100
