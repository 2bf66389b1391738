"""Load shedding by the pipeline's backlog: admit what can finish in time, refuse the
rest at once (or queue it, bounded): the notes' degradation under a burst past capacity.

Little's law ties the three numbers a front door can know: the work in flight ``L``
(accepted, not finished), the rate the pipeline finishes it ``λ``, and the time a piece
of work spends inside ``W = L / λ``. Keeping ``L ≤ λ · target`` keeps ``W`` near
``target`` whatever the offered load: past it a request is *shed*, answered at once
with when to retry, instead of joining a queue whose wait grows without bound.

``BacklogGate`` is pure (``now`` is passed in): fed observations of the backlog by its
owner (a poll of the database, say), it decides per request. Policy:

- a VIP is shed last: it is admitted up to ``vip_headroom`` times the limit;
- ``floor`` orders are always allowed in flight, so a pipeline that finished nothing
  lately (it just started, or it stalls) still takes work at a trickle and the rate is
  measured again;
- with ``queue > 0``, a request over the limit waits in a leaky-bucket shaper released
  at the measured rate (the notes' "degradation by queueing"), up to ``queue``
  waiting; a full queue sheds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from relaybus.streams.ratelimit.leaky_bucket import LeakyShaper, Rejected

MAX_RETRY_AFTER = 10.0  # a stalled pipeline: ask again soon, the floor lets a trickle in


@dataclass(frozen=True)
class Shed:
    """Refused: ``reason`` says which limit, ``retry_after`` seconds until the backlog
    is expected to be under it again (at least 1)."""

    reason: str
    retry_after: float


@dataclass(frozen=True)
class Admit:
    """Admitted, at once (``wait`` 0) or after ``wait`` seconds in the shaper's queue."""

    wait: float = 0.0


class BacklogGate:
    """Admission by ``in_flight ≤ max(floor, λ · target_seconds)`` (see the module).

    ``observe(now, in_flight, arrived, counted)`` feeds the backlog seen at ``now`` and
    the work that arrived since the previous observation (through every front door,
    not only this one); the finish rate is estimated from them (exponentially
    smoothed). Between observations the gate counts what it admitted itself, so one
    poll interval cannot overshoot the limit by more than the other doors admit; pass
    ``counted = gate.admitted`` read when the reading *began*, and what was admitted
    while it ran stays counted.
    """

    def __init__(
        self,
        target_seconds: float,
        floor: int,
        vip_headroom: float = 2.0,
        queue: int = 0,
        smoothing: float = 0.3,
    ) -> None:
        if target_seconds <= 0 or floor < 1 or vip_headroom < 1 or queue < 0:
            raise ValueError("target_seconds > 0, floor >= 1, vip_headroom >= 1, queue >= 0")
        if not 0 < smoothing <= 1:
            raise ValueError("smoothing must be in (0, 1]")
        self.target_seconds = target_seconds
        self.floor = floor
        self.vip_headroom = vip_headroom
        self.smoothing = smoothing
        self.in_flight = 0
        self.rate: float | None = None  # finished per second, smoothed
        self.admitted = 0  # by this gate since the last observation
        self._last: tuple[float, int] | None = None  # (at, in_flight)
        self._shaper = LeakyShaper(1.0, queue) if queue else None

    @property
    def limit(self) -> int:
        """The backlog admitted work may reach (non-VIP)."""
        if self.rate is None:
            return self.floor
        return max(self.floor, math.ceil(self.rate * self.target_seconds))

    def observe(self, now: float, in_flight: int, arrived: int, counted: int | None = None) -> None:
        """The backlog at ``now``: ``in_flight`` unfinished, ``arrived`` new since the
        previous observation; ``counted`` of this gate's admissions are in the reading
        (default: all of them)."""
        if self._last is not None:
            at, before = self._last
            if now > at:
                finished = max(0, before + arrived - in_flight)
                sample = finished / (now - at)
                self.rate = (
                    sample
                    if self.rate is None
                    else self.smoothing * sample + (1 - self.smoothing) * self.rate
                )
                if self._shaper is not None:
                    self._shaper.rate = max(self.rate, 1.0 / MAX_RETRY_AFTER)
        self._last = (now, in_flight)
        self.in_flight = in_flight
        self.admitted = max(0, self.admitted - (self.admitted if counted is None else counted))

    def decide(self, now: float, vip: bool = False) -> Admit | Shed:
        """Admit or shed one request (an admitted one counts in the backlog at once)."""
        backlog = self.in_flight + self.admitted
        limit = self.limit * (self.vip_headroom if vip else 1.0)
        if backlog < limit:
            self.admitted += 1
            return Admit()
        if self._shaper is not None and not vip:
            offered = self._shaper.offer(now)
            if isinstance(offered, Rejected):
                return Shed(
                    f"queue full: {self._shaper.capacity} requests waiting for a backlog "
                    f"of {backlog} orders to drain",
                    self._retry_after(backlog - limit + self._shaper.capacity),
                )
            self.admitted += 1
            return Admit(max(0.0, offered.release_at - now))
        who = "VIP " if vip else ""
        return Shed(
            f"overloaded: {backlog} orders in flight, the {who}limit is {math.ceil(limit)} "
            f"({self.target_seconds:g} s of work at {self.rate or 0:.1f} orders/s)",
            self._retry_after(backlog - limit + 1),
        )

    def _retry_after(self, excess: float) -> float:
        """Seconds until ``excess`` orders have drained at the measured rate."""
        if not self.rate:
            return MAX_RETRY_AFTER if self.rate == 0 else 1.0
        return min(MAX_RETRY_AFTER, max(1.0, math.ceil(excess / self.rate)))
