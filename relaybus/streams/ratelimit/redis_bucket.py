"""A token bucket shared by many processes: one atomic Lua script in Redis."""

from __future__ import annotations

from redis.asyncio import Redis

from relaybus.streams.ratelimit.base import Admission

# KEYS[1] = the bucket; ARGV = rate (tokens/s), burst, cost.
# The server's clock (TIME) is the only clock: processes with skewed clocks share one
# bucket correctly. The script runs atomically, so concurrent callers never both take
# the last token. State: tokens and the time they were counted at, in microseconds;
# the key expires once the bucket would be full again (idle buckets cost nothing).
TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil then
  tokens = burst
  at = now
end
if now > at then
  tokens = math.min(burst, tokens + (now - at) * rate / 1000000)
  at = now
end
local allowed = 0
local wait = 0
if cost <= tokens then
  tokens = tokens - cost
  allowed = 1
elseif cost > burst or rate <= 0 then
  wait = -1
else
  wait = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(at))
if rate > 0 then
  redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
end
return {allowed, tostring(wait)}
"""


class RedisTokenBucket:
    """``TokenBucket``'s contract for a bucket shared by every process that uses the
    same Redis key: in any span of ``t`` seconds (server time) at most
    ``rate·t + burst`` are admitted, however many processes ask at once.

    One round trip per request (``EVALSHA`` of one script). If Redis is unreachable the
    error propagates: the caller decides whether to fail open or closed.
    """

    def __init__(self, client: Redis, key: str, rate: float, burst: int) -> None:
        if rate < 0 or burst < 0:
            raise ValueError("rate and burst must be >= 0")
        self.key = key
        self.rate = rate
        self.burst = burst
        self._take = client.register_script(TAKE)

    async def try_acquire(self, cost: int = 1) -> Admission:
        """Take ``cost`` tokens or say how long until they are there (inf: never)."""
        allowed, wait = await self._take(keys=[self.key], args=[self.rate, self.burst, cost])
        if int(allowed):
            return Admission(True)
        seconds = float(wait)
        return Admission(False, float("inf") if seconds < 0 else max(seconds, 1e-6))
