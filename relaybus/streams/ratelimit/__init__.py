"""Rate limiting: the notes' four algorithms as pure classes with one contract.

Every limiter is deterministic given the times it is called with (``now`` is passed
in, seconds on any monotonic clock), so the contract suite drives them with
generated schedules; the processors pass ``time.monotonic()``.
"""

from relaybus.streams.ratelimit.base import Admission, RateLimiter
from relaybus.streams.ratelimit.fixed_window import FixedWindow
from relaybus.streams.ratelimit.leaky_bucket import LeakyShaper, Rejected, Scheduled
from relaybus.streams.ratelimit.sliding_window import SlidingCounter, SlidingLog
from relaybus.streams.ratelimit.token_bucket import TokenBucket

__all__ = [
    "Admission",
    "FixedWindow",
    "LeakyShaper",
    "RateLimiter",
    "Rejected",
    "Scheduled",
    "SlidingCounter",
    "SlidingLog",
    "TokenBucket",
]
