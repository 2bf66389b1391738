"""One retry policy object for both brokers."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """At most ``max_attempts`` deliveries; before attempt ``n+1`` wait
    ``initial_delay · multiplier^(n-1)`` (capped at ``max_delay``), jittered down by up
    to ``jitter`` (a fraction) so consumers that failed together retry apart.

    Kafka uses it for the tiers ``<topic>.retry.<n>`` (n = 1 … max_attempts-1) or,
    for ordered handlers, to wait in place; RabbitMQ for per-message TTLs on the
    queues ``<queue>.retry.<n>``.
    """

    max_attempts: int = 4
    initial_delay: float = 1.0
    multiplier: float = 2.0
    max_delay: float = 60.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_delay < 0 or self.max_delay < 0:
            raise ValueError("delays must not be negative")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")

    @property
    def tiers(self) -> int:
        """How many retry tiers (queues/topics) this policy needs."""
        return self.max_attempts - 1

    def exhausted(self, attempt: int) -> bool:
        """True if delivery ``attempt`` (1-based) was the last one allowed."""
        return attempt >= self.max_attempts

    def delay(self, failed_attempt: int) -> float:
        """Seconds to wait after attempt ``failed_attempt`` (1-based) failed."""
        # The exponent is capped: multiplier ** 1024 overflows a float.
        exponent = min(max(failed_attempt - 1, 0), 64)
        base = min(self.max_delay, self.initial_delay * self.multiplier**exponent)
        return base * (1 - random.uniform(0, self.jitter))
