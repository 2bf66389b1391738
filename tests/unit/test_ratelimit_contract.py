"""One contract suite for every rate limiter, with hypothesis schedules: each admits no
more than its guarantee in any window, refuses with a useful hint, recovers after a
pause; the leaky shaper releases at its rate and rejects only with a full queue."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from itertools import accumulate, pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaybus.streams.ratelimit import (
    FixedWindow,
    LeakyShaper,
    RateLimiter,
    Rejected,
    Scheduled,
    SlidingCounter,
    SlidingLog,
    TokenBucket,
)

EPS = 1e-9
gaps = st.lists(st.floats(min_value=0, max_value=0.5, allow_nan=False), min_size=1, max_size=300)


def times_of(deltas: list[float]) -> list[float]:
    return list(accumulate(deltas))


def admitted(limiter: RateLimiter, times: list[float]) -> list[float]:
    return [t for t in times if limiter.try_acquire(t).allowed]


def most_in_span(times: list[float], span: float, closed: bool = True) -> int:
    """The most admissions in any span [t, t + span] (closed) or [t, t + span)."""
    best = 0
    for i, start in enumerate(times):
        end = (
            bisect.bisect_right(times, start + span)
            if closed
            else bisect.bisect_left(times, start + span)
        )
        best = max(best, end - i)
    return best


LIMITERS: dict[str, Callable[[], RateLimiter]] = {
    "fixed-window": lambda: FixedWindow(5, 1.0),
    "sliding-log": lambda: SlidingLog(5, 1.0),
    "sliding-counter": lambda: SlidingCounter(5, 1.0),
    "token-bucket": lambda: TokenBucket(5.0, 5),
}


@pytest.mark.parametrize("make", LIMITERS.values(), ids=LIMITERS.keys())
@given(deltas=gaps)
@settings(max_examples=60, deadline=None)
def test_refusals_give_a_positive_wait_and_a_pause_restores_capacity(
    make: Callable[[], RateLimiter], deltas: list[float]
) -> None:
    limiter = make()
    times = times_of(deltas)
    for t in times:
        answer = limiter.try_acquire(t)
        assert answer.allowed or answer.retry_after > 0
        assert not answer.allowed or answer.retry_after == 0
    # Two windows (a second refills the bucket) after the last call: admitted again.
    assert limiter.try_acquire(times[-1] + 2.0).allowed


@pytest.mark.parametrize("make", LIMITERS.values(), ids=LIMITERS.keys())
def test_a_refused_request_is_admitted_once_its_hint_has_passed(
    make: Callable[[], RateLimiter],
) -> None:
    limiter = make()
    t = 10.0
    while limiter.try_acquire(t).allowed:
        t += 0.001
    hint = limiter.try_acquire(t).retry_after
    assert limiter.try_acquire(t + hint + 1e-6).allowed


@pytest.mark.parametrize("make", LIMITERS.values(), ids=LIMITERS.keys())
def test_a_clock_that_steps_back_gives_no_extra_capacity(make: Callable[[], RateLimiter]) -> None:
    limiter = make()
    granted = sum(limiter.try_acquire(100.0).allowed for _ in range(20))
    granted += sum(limiter.try_acquire(50.0).allowed for _ in range(20))
    assert granted == 5


@given(deltas=gaps, rate=st.integers(1, 20), burst=st.integers(0, 20))
@settings(max_examples=200, deadline=None)
def test_token_bucket_never_admits_more_than_rate_times_t_plus_burst(
    deltas: list[float], rate: int, burst: int
) -> None:
    got = admitted(TokenBucket(rate, burst), times_of(deltas))
    for i, start in enumerate(got):
        for j in range(i, len(got)):
            assert j - i + 1 <= rate * (got[j] - start) + burst + EPS


@given(deltas=gaps, limit=st.integers(0, 10), window=st.floats(0.1, 2.0))
@settings(max_examples=200, deadline=None)
def test_sliding_log_never_admits_more_than_its_limit_in_any_window(
    deltas: list[float], limit: int, window: float
) -> None:
    got = admitted(SlidingLog(limit, window), times_of(deltas))
    # (t - window, t]: a span of ``window`` open at its start.
    assert most_in_span(got, window, closed=False) <= limit


@pytest.mark.parametrize("kind", [FixedWindow, SlidingCounter])
@given(deltas=gaps, limit=st.integers(0, 10), window=st.floats(0.1, 2.0))
@settings(max_examples=150, deadline=None)
def test_window_counters_keep_each_aligned_window_and_twice_the_limit_in_any_span(
    kind: type[FixedWindow] | type[SlidingCounter],
    deltas: list[float],
    limit: int,
    window: float,
) -> None:
    got = admitted(kind(limit, window), times_of(deltas))
    per_window: dict[int, int] = {}
    for t in got:
        index = math.floor(t / window)
        per_window[index] = per_window.get(index, 0) + 1
    assert max(per_window.values(), default=0) <= limit
    assert most_in_span(got, window, closed=False) <= 2 * limit


def test_sliding_log_has_no_boundary_burst_that_the_fixed_window_lets_through() -> None:
    # 5 at the end of one window, 5 at the start of the next: 10 within 0.2 s.
    times = [0.9 + i * 0.01 for i in range(5)] + [1.0 + i * 0.01 for i in range(5)]
    assert len(admitted(FixedWindow(5, 1.0), times)) == 10
    assert len(admitted(SlidingLog(5, 1.0), times)) == 5


@given(deltas=gaps, rate=st.integers(1, 50), capacity=st.integers(0, 20))
@settings(max_examples=200, deadline=None)
def test_shaper_releases_at_its_rate_and_rejects_only_with_a_full_queue(
    deltas: list[float], rate: int, capacity: int
) -> None:
    shaper = LeakyShaper(rate, capacity)
    releases: list[float] = []
    for now in times_of(deltas):
        waiting = sum(1 for r in releases if r > now + EPS)
        answer = shaper.offer(now)
        if isinstance(answer, Scheduled):
            assert answer.release_at >= now - EPS
            releases.append(answer.release_at)
            assert sum(1 for r in releases if r > now + EPS) <= capacity
        else:
            assert isinstance(answer, Rejected)
            assert waiting >= capacity, "rejected while the queue had room"
            assert answer.retry_after >= -EPS
    for earlier, later in pairwise(releases):
        assert later - earlier >= 1 / rate - EPS  # in order, one per 1/rate


def test_shaper_turns_a_burst_into_a_steady_flow() -> None:
    shaper = LeakyShaper(rate=10, capacity=5)
    answers = [shaper.offer(0.0) for _ in range(8)]
    scheduled = [a.release_at for a in answers if isinstance(a, Scheduled)]
    assert scheduled == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    assert [type(a) for a in answers[6:]] == [Rejected, Rejected]
    assert isinstance(shaper.offer(0.1 + 1e-6), Scheduled)  # one left: a place freed
