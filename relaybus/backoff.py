"""Exponential backoff with full jitter, for loops that retry until told to stop."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays ``initial·2^n`` capped at ``maximum``, each drawn uniformly from [d/2, d].

    Half-jitter keeps a floor under the delay (no hot retry loops) while spreading
    many clients that failed together. ``reset()`` after a success.
    """

    initial: float = 0.1
    maximum: float = 10.0
    attempts: int = field(default=0, init=False)

    def next_delay(self) -> float:
        """The delay before the next attempt; increments the attempt count."""
        # The exponent stops growing once the cap is reached: 2.0 ** 1024 would
        # overflow, and a loop may fail that often during a long outage.
        ceiling = min(self.maximum, self.initial * (2.0 ** min(self.attempts, 64)))
        self.attempts += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempts = 0
