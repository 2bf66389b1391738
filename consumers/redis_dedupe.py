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

import uuid

from redis.asyncio import Redis

CLAIMED = b"processing"
DONE = b"done"


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

    async def claim(self, consumer: str, message_id: uuid.UUID) -> bool:
        """True if this caller may run the handler (no claim or completion exists)."""
        ok = await self.redis.set(
            self.key(consumer, message_id), CLAIMED, nx=True, px=self.claim_ttl_ms
        )
        return bool(ok)

    async def done(self, consumer: str, message_id: uuid.UUID) -> None:
        """Mark completed; duplicates are skipped for ``done_ttl`` (the retention)."""
        await self.redis.set(self.key(consumer, message_id), DONE, px=self.done_ttl_ms)

    async def release(self, consumer: str, message_id: uuid.UUID) -> None:
        """The handler failed: drop the claim so a retry may run it."""
        await self.redis.delete(self.key(consumer, message_id))
