"""Dedupe for handlers without SQL effects: Redis ``SET NX`` with a TTL.

Weaker than the inbox, by construction: the mark and the effect are not one
transaction. A message is *claimed* (``SET NX``, short TTL) before the handler runs
and *marked done* (long TTL) after it returns, so concurrent duplicates are skipped
and completed ones are skipped until the TTL ends. But a crash after the effect and
before the mark repeats the effect on redelivery, and a claim whose handler
outlives the claim TTL lets a duplicate in. Use it for effects that are themselves
idempotent-ish (cache fills, notifications); use the inbox for anything that counts.
"""

from __future__ import annotations

import asyncio
import uuid
from enum import Enum

from redis.asyncio import Redis

CLAIMED = b"processing"
DONE = b"done"


class Claim(Enum):
    """The result of ``RedisDedupe.claim``."""

    OURS = "ours"  # run the handler
    DONE = "done"  # completed before: a duplicate
    BUSY = "busy"  # another delivery holds a live claim: retry later, never skip


class RedisDedupe:
    """Claim / done / release of ``(consumer, message_id)`` keys in Redis."""

    def __init__(
        self, redis: Redis, *, claim_ttl: float = 60.0, done_ttl: float = 7 * 86400.0
    ) -> None:
        self.redis = redis
        self.claim_ttl_ms = int(claim_ttl * 1000)
        self.done_ttl_ms = int(done_ttl * 1000)

    @staticmethod
    def key(consumer: str, message_id: uuid.UUID) -> str:
        return f"relaybus:dedupe:{consumer}:{message_id}"

    async def claim(self, consumer: str, message_id: uuid.UUID) -> Claim:
        """Try to claim; ``OURS`` if this caller may run the handler, ``DONE`` if the
        message was completed, ``BUSY`` while someone else's claim is live (a worker
        killed mid-handler leaves one until its TTL ends)."""
        key = self.key(consumer, message_id)
        if await self.redis.set(key, CLAIMED, nx=True, px=self.claim_ttl_ms):
            return Claim.OURS
        state = await self.redis.get(key)
        if state == DONE:
            return Claim.DONE
        return Claim.BUSY  # a claim (or it just expired: the caller looks again)

    async def wait_released(self, consumer: str, message_id: uuid.UUID) -> None:
        """Wait until a live claim may have ended: its remaining TTL, polled at most
        every 0.5 s (the holder may finish, or fail and release it, earlier)."""
        remaining_ms = await self.redis.pttl(self.key(consumer, message_id))
        await asyncio.sleep(min(max(remaining_ms, 10), 500) / 1000)

    async def done(self, consumer: str, message_id: uuid.UUID) -> None:
        """Mark completed; duplicates are skipped for ``done_ttl`` (the retention)."""
        await self.redis.set(self.key(consumer, message_id), DONE, px=self.done_ttl_ms)

    async def release(self, consumer: str, message_id: uuid.UUID) -> None:
        """The handler failed: drop the claim so a retry may run it."""
        await self.redis.delete(self.key(consumer, message_id))
