"""Token bucket."""

from __future__ import annotations

import math

from relaybus.streams.ratelimit.base import Admission


class TokenBucket:
    """Tokens refill at ``rate`` per second up to ``burst``; a request takes ``cost``.

    Guarantee: in any span of ``t`` seconds at most ``rate·t + burst`` are admitted
    (a full bucket, plus what refills meanwhile); bursts up to ``burst`` pass at once.
    Starts full.
    """

    def __init__(self, rate: float, burst: int) -> None:
        if rate < 0 or burst < 0:
            raise ValueError("rate and burst must be >= 0")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._now = -math.inf

    def try_acquire(self, now: float, cost: int = 1) -> Admission:
        if self._now == -math.inf:
            self._now = now
        if now > self._now:
            self._tokens = min(self.burst, self._tokens + (now - self._now) * self.rate)
            self._now = now
        if cost <= self._tokens:
            self._tokens -= cost
            return Admission(True)
        if cost > self.burst or self.rate == 0:
            return Admission(False, math.inf)
        return Admission(False, (cost - self._tokens) / self.rate)
