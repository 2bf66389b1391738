"""Admission's limits as token buckets in Redis, checked together in one script."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

# KEYS[1] = the decision's key; KEYS[2..n+1] = the buckets.
# ARGV[1] = decision TTL (s); ARGV[2i], ARGV[2i+1] = rate (tokens/s) and burst of bucket i.
# Returns the decision: "0" admitted, "i" refused by bucket i (the first that is empty).
#
# All-or-nothing: a token is taken from every bucket only if every bucket has one, so
# a request refused by the global limit does not use up its customer's budget. The
# decision is remembered under KEYS[1]: a request offered again (a redelivery after a
# crash) gets the same answer and takes nothing. Server time only (TIME), as in
# ``redis_bucket.TAKE``. All keys in one script: a single Redis (or one hash slot).
ADMIT = """
local prior = redis.call('GET', KEYS[1])
if prior then return prior end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS - 1
local tokens = {}
local refused = 0
for i = 1, n do
  local rate = tonumber(ARGV[2 * i])
  local burst = tonumber(ARGV[2 * i + 1])
  local state = redis.call('HMGET', KEYS[i + 1], 'tokens', 'at')
  local tk = tonumber(state[1])
  local at = tonumber(state[2])
  if tk == nil then
    tk = burst
    at = now
  end
  if now > at then
    tk = math.min(burst, tk + (now - at) * rate / 1000000)
  end
  tokens[i] = tk
  if refused == 0 and tk < 1 then refused = i end
end
if refused == 0 then
  for i = 1, n do
    local rate = tonumber(ARGV[2 * i])
    local burst = tonumber(ARGV[2 * i + 1])
    local left = tokens[i] - 1
    redis.call('HSET', KEYS[i + 1], 'tokens', tostring(left), 'at', tostring(now))
    if rate > 0 then
      redis.call('PEXPIRE', KEYS[i + 1], math.ceil((burst - left) / rate * 1000) + 1000)
    end
  end
end
redis.call('SET', KEYS[1], tostring(refused), 'EX', tonumber(ARGV[1]))
return tostring(refused)
"""


@dataclass(frozen=True)
class Limit:
    """One token bucket: ``scope`` names it in reasons (``per-user``, ``per-ip``,
    ``global``); at most ``rate·t + burst`` requests in any ``t`` seconds."""

    scope: str
    rate: float
    burst: int

    def describe(self) -> str:
        return f"{self.scope} limit ({self.rate:g}/s, burst {self.burst})"


@dataclass(frozen=True)
class Ask:
    """One request to decide: its id (the decision's key) and its buckets."""

    request_id: str
    buckets: Sequence[tuple[str, Limit]]  # (redis key, limit)


class RedisAdmission:
    """Decides requests against token buckets shared by every admission process.

    ``decide`` sends one ``EVALSHA`` per request, all in one pipeline (one round trip
    per batch). Each answer is ``None`` (admitted) or the ``Limit`` that refused it.
    A request decided before (same id, within ``decision_ttl``) gets its first answer
    again. If Redis fails, the error propagates and nothing is decided: the caller
    offers the batch again later (admission fails closed, not open).
    """

    def __init__(self, client: Redis, decision_ttl: int, prefix: str = "admission") -> None:
        self.client = client
        self.decision_ttl = decision_ttl
        self.prefix = prefix
        self._admit = client.register_script(ADMIT)

    async def decide(self, asks: Sequence[Ask]) -> list[Limit | None]:
        if not asks:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for ask in asks:
                args: list[float | int] = [self.decision_ttl]
                for _, limit in ask.buckets:
                    args += [limit.rate, limit.burst]
                await self._admit(
                    keys=[f"{self.prefix}:decision:{ask.request_id}"]
                    + [key for key, _ in ask.buckets],
                    args=args,
                    client=pipe,
                )
            answers = await pipe.execute()
        decided: list[Limit | None] = []
        for ask, answer in zip(asks, answers, strict=True):
            index = int(answer)
            decided.append(None if index == 0 else ask.buckets[index - 1][1])
        return decided
