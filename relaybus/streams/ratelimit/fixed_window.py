"""Fixed window counter."""

from __future__ import annotations

import math

from relaybus.streams.ratelimit.base import Admission


class FixedWindow:
    """At most ``limit`` admissions per aligned window ``[k·window, (k+1)·window)``.

    The cheapest algorithm, with the notes' known flaw: up to ``2·limit`` can pass in
    a span of one window that straddles a boundary (the end of one window and the
    start of the next).
    """

    def __init__(self, limit: int, window: float) -> None:
        if limit < 0 or window <= 0:
            raise ValueError("limit must be >= 0 and window > 0")
        self.limit = limit
        self.window = window
        self._index = -1
        self._count = 0
        self._now = -math.inf

    def try_acquire(self, now: float, cost: int = 1) -> Admission:
        now = self._now = max(now, self._now)
        index = math.floor(now / self.window)
        if index != self._index:
            self._index, self._count = index, 0
        if self._count + cost <= self.limit:
            self._count += cost
            return Admission(True)
        return Admission(False, (index + 1) * self.window - now)
