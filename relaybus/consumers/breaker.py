"""A circuit breaker per downstream dependency; consumers pause while it is open."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    """Opens after ``failure_threshold`` consecutive failures; after ``reset_timeout``
    seconds lets one probe through (half-open): success closes it, failure reopens it.

    ``wait_ready()`` is what consumers call before handling a message: it returns at
    once when closed, waits while open (so nothing is consumed and no retries are
    burned), and admits one caller at a time while half-open.
    """

    def __init__(
        self,
        name: str,
        failure_threshold: int = 5,
        reset_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probe = asyncio.Lock()
        # Only the probing task may release the probe slot: calls that started before
        # the breaker opened may still be finishing, and must not admit a second probe.
        self._probe_owner: asyncio.Task[object] | None = None
        self._changed = asyncio.Event()
        self.opened_count = 0

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self.reset_timeout:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    async def wait_ready(self) -> None:
        """Return when a call may proceed (closed, or this caller is the probe)."""
        while True:
            state = self.state
            if state is BreakerState.CLOSED:
                return
            if state is BreakerState.HALF_OPEN and not self._probe.locked():
                await self._probe.acquire()
                if self.state is not BreakerState.CLOSED:
                    self._probe_owner = asyncio.current_task()
                    return  # we are the probe; our success() or failure() releases
                self._probe.release()
                continue
            assert self._opened_at is not None
            remaining = max(0.01, self._opened_at + self.reset_timeout - self._clock())
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._release_probe()

    def failure(self) -> None:
        self._failures += 1
        if self._opened_at is not None or self._failures >= self.failure_threshold:
            if self._opened_at is None:
                self.opened_count += 1
            self._opened_at = self._clock()
        self._release_probe()

    def _release_probe(self) -> None:
        if self._probe.locked() and self._probe_owner is asyncio.current_task():
            self._probe_owner = None
            self._probe.release()
        self._changed.set()
