"""Leaky bucket as a shaper: degradation by queueing."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Scheduled:
    """The request is queued and leaves the bucket at ``release_at``."""

    release_at: float


@dataclass(frozen=True)
class Rejected:
    """The queue is full; ``retry_after`` seconds until a place frees up."""

    retry_after: float


class LeakyShaper:
    """Requests leave at a steady ``rate`` per second, in arrival order; up to
    ``capacity`` wait in the bucket; past that a request is rejected (explicitly, never
    dropped). The notes' "degradation by queueing": a burst is smoothed into a steady
    flow instead of being refused, as long as the queue has room.

    ``offer(now)`` answers when the request may proceed (``Scheduled.release_at``,
    ``now`` if the bucket is empty). Guarantee: release times are at least ``1/rate``
    apart, and a request is rejected only when ``capacity`` requests are waiting.
    """

    def __init__(self, rate: float, capacity: int) -> None:
        if rate <= 0 or capacity < 0:
            raise ValueError("rate must be > 0 and capacity >= 0")
        self.rate = rate
        self.capacity = capacity
        self._next_free = -math.inf  # when the next request may leave
        self._now = -math.inf

    def waiting(self, now: float) -> int:
        """Requests queued and not yet released at ``now``.

        The queued requests leave at ``next_free - k/rate`` for k = 1, 2, …; those
        still later than ``now`` are waiting.
        """
        now = max(now, self._now)
        if self._next_free <= now:
            return 0
        return max(math.ceil((self._next_free - now) * self.rate - 1e-9) - 1, 0)

    def offer(self, now: float) -> Scheduled | Rejected:
        now = self._now = max(now, self._now)
        if self._next_free > now and self.waiting(now) >= self.capacity:
            # A place frees when the earliest waiting request leaves.
            return Rejected(self._next_free - self.capacity / self.rate - now)
        release = max(now, self._next_free)
        self._next_free = release + 1.0 / self.rate
        return Scheduled(release)
