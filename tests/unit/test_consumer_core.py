"""Broker-neutral consumer pieces: retry policy, breaker, decoding, dead-letter headers."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from relaybus import headers as h
from relaybus.consumers.breaker import BreakerState, CircuitBreaker
from relaybus.consumers.failure import FailurePath
from relaybus.consumers.incoming import InvalidMessage, WireLimits, decode
from relaybus.consumers.policy import RetryPolicy
from relaybus.consumers.worker import WorkerNotFound, load_app
from tests.support.cli import invoke as run_cli

GOOD = {"id": str(uuid.uuid4()), "type": "order.created"}


def test_retry_policy_tiers_exhaustion_and_jittered_backoff() -> None:
    policy = RetryPolicy(
        max_attempts=4, initial_delay=1.0, multiplier=2.0, max_delay=3.0, jitter=0.2
    )
    assert policy.tiers == 3
    assert not policy.exhausted(3)
    assert policy.exhausted(4)
    for attempt, base in ((1, 1.0), (2, 2.0), (3, 3.0), (9, 3.0)):
        for _ in range(50):
            assert base * 0.8 <= policy.delay(attempt) <= base
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="jitter"):
        RetryPolicy(jitter=1.0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def _yield_many() -> None:
    for _ in range(10):
        await asyncio.sleep(0)  # let other tasks run (no wall-clock wait)


async def test_breaker_opens_after_threshold_admits_one_probe_and_closes_on_success() -> None:
    clock = Clock()
    breaker = CircuitBreaker("dep", failure_threshold=2, reset_timeout=5.0, clock=clock)
    await breaker.wait_ready()
    breaker.failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.failure()
    assert breaker.state is BreakerState.OPEN

    admitted = asyncio.Event()
    finish = asyncio.Event()

    async def probe() -> None:
        await breaker.wait_ready()
        admitted.set()
        await finish.wait()
        breaker.success()  # only the probing task's outcome counts

    probing = asyncio.create_task(probe())
    await _yield_many()
    assert not admitted.is_set()  # blocked while open
    clock.now = 5.0
    assert breaker.state is BreakerState.HALF_OPEN
    breaker._changed.set()  # what its timer would do; the clock here is fake
    await asyncio.wait_for(admitted.wait(), 5)
    second = asyncio.create_task(breaker.wait_ready())
    await _yield_many()
    assert not second.done()  # one probe at a time
    finish.set()
    await asyncio.wait_for(probing, 5)
    assert breaker.state is BreakerState.CLOSED
    await asyncio.wait_for(second, 5)


def test_breaker_failed_probe_reopens() -> None:
    clock = Clock()
    breaker = CircuitBreaker("dep", failure_threshold=1, reset_timeout=1.0, clock=clock)
    breaker.failure()
    clock.now = 1.0
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.failure()
    assert breaker.state is BreakerState.OPEN
    assert breaker.opened_count == 1


@pytest.mark.parametrize(
    ("raw", "headers", "reason"),
    [
        (b"not json", GOOD, "not-json"),
        (b'{"a": 1', GOOD, "not-json"),
        (b"\xff\xfe", GOOD, "not-utf8"),
        (b"{}", {"type": "x"}, "missing-id"),
        (b"{}", {"id": "nope", "type": "x"}, "bad-id"),
        (b"{}", {"id": GOOD["id"]}, "missing-type"),
        (b"{}", {**GOOD, "type": "other"}, "unknown-type"),
        (b"[" + b"1," * 100 + b"1]", GOOD, "oversize"),
    ],
)
def test_decode_refuses_with_a_reason(raw: bytes, headers: dict[str, str], reason: str) -> None:
    with pytest.raises(InvalidMessage) as err:
        decode(raw, headers, key="k", source="t", accepted_types={"order.created"}, max_bytes=100)
    assert err.value.reason == reason


def test_decode_takes_the_attempt_from_the_caller_and_drops_reserved_headers() -> None:
    forged = {**GOOD, h.ATTEMPTS: "99", h.ORIGINAL_TOPIC: "elsewhere", "x-relaybus-any": "1"}
    message = decode(b'{"n": 1}', forged, key="k", source="t", attempt=3)
    assert message.attempt == 3
    assert message.payload == {"n": 1}
    assert message.id == uuid.UUID(GOOD["id"])
    assert message.headers == GOOD
    assert message.source == "t"


def test_dead_letter_headers_are_exactly_the_design_set_plus_the_originals() -> None:
    try:
        raise ValueError("boom")
    except ValueError as err:
        error = err
    path = FailurePath("billing", "orders", tiers=2, limits=WireLimits())
    message = decode(
        b"{}",
        {**GOOD, h.RETRY_AT: "1", h.ATTEMPTS: "1"},
        key="k",
        source="orders",
        partition=2,
        offset=41,
        attempt=3,
    )
    copy = path.dead(message, "max-attempts", error)
    headers = copy.headers
    assert copy.destination == "orders.dlq"
    assert set(headers) == set(GOOD) | set(h.DEAD_LETTER)
    assert headers[h.ATTEMPTS] == "3"
    assert headers[h.EXCEPTION_TYPE] == "ValueError"
    assert headers[h.EXCEPTION_MESSAGE] == "boom"
    assert "Traceback" in headers[h.STACKTRACE]
    assert (headers[h.ORIGINAL_PARTITION], headers[h.ORIGINAL_OFFSET]) == ("2", "41")
    assert headers[h.ORIGINAL_TOPIC] == "orders"
    assert headers[h.FAILED_AT].endswith("Z")
    json.dumps(headers)


def test_load_app_explains_what_is_wrong() -> None:
    with pytest.raises(WorkerNotFound, match="module:attribute"):
        load_app("orders-that-do-not-exist")
    with pytest.raises(WorkerNotFound, match="cannot import"):
        load_app("no_such_module_xyz:app")
    with pytest.raises(WorkerNotFound, match="not a ConsumerApp"):
        load_app("json:dumps_nothing")
    with pytest.raises(WorkerNotFound, match="function of no arguments"):
        load_app("json:dumps")  # a function that needs arguments is not a factory


def test_worker_command_bad_name_is_one_line() -> None:
    result = run_cli("worker", "nope")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "unknown worker 'nope'" in result.stderr
