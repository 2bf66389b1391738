"""Polling with a deadline: the only way tests wait for something to happen."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def eventually(
    probe: Callable[[], Awaitable[bool]], within: float = 30.0, what: str = "condition"
) -> None:
    """Await ``probe`` until it returns True; fail the test after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        if await probe():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {within}s")
        await asyncio.sleep(0.05)
