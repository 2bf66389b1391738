"""The limiter contract shared by every algorithm."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Admission:
    """The answer for one request: ``allowed``, or not and when to try again
    (``retry_after`` seconds from ``now``; 0 when allowed)."""

    allowed: bool
    retry_after: float = 0.0


class RateLimiter(Protocol):
    """Admits or refuses requests for one key (a user, an IP, "global").

    ``try_acquire(now)`` never blocks and never queues: it admits (and counts) the
    request or refuses it with a hint. Calls must come with non-decreasing ``now``;
    an earlier ``now`` is treated as the latest seen (clocks that step back never
    hand out extra capacity).
    """

    def try_acquire(self, now: float, cost: int = 1) -> Admission: ...
