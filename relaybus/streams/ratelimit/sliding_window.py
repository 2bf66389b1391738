"""Sliding window: the exact log and the approximate two-window counter."""

from __future__ import annotations

import math
from collections import deque

from relaybus.streams.ratelimit.base import Admission


class SlidingLog:
    """Exact: at most ``limit`` admissions in *any* span of ``window`` seconds
    (``(now - window, now]``). Keeps one timestamp per admission (memory O(limit))."""

    def __init__(self, limit: int, window: float) -> None:
        if limit < 0 or window <= 0:
            raise ValueError("limit must be >= 0 and window > 0")
        self.limit = limit
        self.window = window
        self._log: deque[float] = deque()
        self._now = -math.inf

    def try_acquire(self, now: float, cost: int = 1) -> Admission:
        now = self._now = max(now, self._now)
        while self._log and self._log[0] <= now - self.window:
            self._log.popleft()
        if len(self._log) + cost <= self.limit:
            self._log.extend([now] * cost)
            return Admission(True)
        if cost > self.limit:
            return Admission(False, math.inf)
        # The oldest admissions that must leave before ``cost`` more fit.
        oldest = self._log[len(self._log) + cost - self.limit - 1]
        return Admission(False, oldest + self.window - now)


class SlidingCounter:
    """Approximate, O(1) memory: the previous aligned window's count, weighted by how
    much of it still overlaps the sliding window, plus the current window's count,
    must stay within ``limit``.

    Guarantee: at most ``limit`` per aligned window, and so at most ``2·limit`` in any
    span of ``window`` seconds; with evenly spread traffic the estimate is close to
    the exact log (the usual choice when a log per key is too much memory).
    """

    def __init__(self, limit: int, window: float) -> None:
        if limit < 0 or window <= 0:
            raise ValueError("limit must be >= 0 and window > 0")
        self.limit = limit
        self.window = window
        self._index = 0
        self._current = 0
        self._previous = 0
        self._now = -math.inf

    def try_acquire(self, now: float, cost: int = 1) -> Admission:
        now = self._now = max(now, self._now)
        index = math.floor(now / self.window)
        if index != self._index:
            self._previous = self._current if index == self._index + 1 else 0
            self._current = 0
            self._index = index
        elapsed = now / self.window - index  # share of the current window gone
        estimate = self._previous * (1.0 - elapsed) + self._current
        if estimate + cost <= self.limit:
            self._current += cost
            return Admission(True)
        if cost > self.limit:
            return Admission(False, math.inf)
        if self._current + cost > self.limit:
            # Not in this window; in the next one this window's count is the
            # "previous" one, and its weight must first fall far enough.
            share = max(0.0, 1.0 - (self.limit - cost) / self._current)
            return Admission(False, (index + 1 + share) * self.window - now)
        # The previous window's weight must fall far enough.
        needed = (self._previous - (self.limit - cost - self._current)) / max(self._previous, 1)
        return Admission(False, max(needed - elapsed, 0.0) * self.window)
