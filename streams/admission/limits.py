"""Admission's limits as token buckets in Redis, checked together in one script."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

from redis.asyncio import Redis

# One call decides a whole batch of requests, in order, atomically.
#
# KEYS[1..3] = the decision hashes of time slices k+1, k, k-1 (k = client time / TTL;
#              decisions are written to slice k and looked up in all three, so clients
#              whose clocks differ by less than the TTL find each other's decisions);
# KEYS[4..]  = the distinct buckets the batch touches.
# ARGV[1]    = TTL (s); ARGV[2] = JSON {"ids": [request id, …], "keys": [[bucket key,
#              …], …] (one list per request), "kinds": [kind number, …] (one per
#              request), "limits": [[[rate, burst], …], …] (one list per kind, one
#              pair per bucket of a request of that kind)}. (One argument, and keys
#              named rather than numbered: the client's per-key work cost more than
#              the decisions.)
# Returns one string, the answers in request order joined by ",": per request "0"
# (admitted) or "j", refused by its j-th bucket. (One bulk string, not an array: the
# client parses an array reply element by element, which cost more than the script.)
#
# All-or-nothing per request: tokens are taken from every bucket of a request only if
# each has one, so a request the global limit refuses does not use up its customer's
# budget. A request decided before (same id, within the TTL) gets its first answer
# again and takes nothing: a redelivery after a crash is harmless. Each bucket is read
# once (MGET) and written once (SET … PX) per batch, as "tokens:microseconds", with the
# rate and burst of the first request that names it; the server's clock (TIME) is the
# only clock. All keys in one script: a single Redis (or one hash slot).
ADMIT = """
local ttl = tonumber(ARGV[1])
local batch = cjson.decode(ARGV[2])
local ids, names, kinds, limits = batch.ids, batch.keys, batch.kinds, batch.limits
local n = #ids
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local index = {}
for b = 4, #KEYS do index[KEYS[b]] = b - 3 end
local states = {}
if #KEYS > 3 then states = redis.call('MGET', unpack(KEYS, 4, #KEYS)) end
local rate, burst, tokens, dirty = {}, {}, {}, {}
local function bucket(name, limit)
  local b = index[name]
  if tokens[b] == nil then
    rate[b] = tonumber(limit[1])
    burst[b] = tonumber(limit[2])
    local tk = burst[b]
    local state = states[b]
    if state then
      local sep = string.find(state, ':', 1, true)
      local at = tonumber(string.sub(state, sep + 1))
      tk = tonumber(string.sub(state, 1, sep - 1))
      if now > at then
        tk = math.min(burst[b], tk + (now - at) * rate[b] / 1000000)
      end
    end
    tokens[b] = tk
  end
  return b
end
local seen = {}
for s = 1, 3 do seen[s] = redis.call('HMGET', KEYS[s], unpack(ids)) end
local out, written, mine = {}, {}, {}
for r = 1, n do
  local prior = mine[ids[r]] or seen[2][r] or seen[1][r] or seen[3][r]
  if prior then
    out[r] = prior
  else
    local own = {}
    local kind = limits[kinds[r]]
    for j, name in ipairs(names[r]) do own[j] = bucket(name, kind[j]) end
    local refused = 0
    for j, b in ipairs(own) do
      if tokens[b] < 1 then refused = j break end
    end
    if refused == 0 then
      for _, b in ipairs(own) do
        tokens[b] = tokens[b] - 1
        dirty[b] = true
      end
    end
    out[r] = tostring(refused)
    mine[ids[r]] = out[r]
    written[#written + 1] = ids[r]
    written[#written + 1] = out[r]
  end
end
for b, _ in pairs(dirty) do
  local value = tostring(tokens[b]) .. ':' .. tostring(now)
  if rate[b] > 0 then
    local full_in = math.ceil((burst[b] - tokens[b]) / rate[b] * 1000) + 1000
    redis.call('SET', KEYS[3 + b], value, 'PX', full_in)
  else
    redis.call('SET', KEYS[3 + b], value)
  end
end
if #written > 0 then
  redis.call('HSET', KEYS[2], unpack(written))
  redis.call('EXPIRE', KEYS[2], 2 * ttl + 60)
end
return table.concat(out, ',')
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
    """One request to decide: its id (the decision's key), its buckets' Redis keys and
    their limits (``limits[j]`` is the bucket ``keys[j]``'s). Asks of one kind should
    share one ``limits`` tuple: the script is told each distinct tuple once."""

    request_id: str
    keys: tuple[str, ...]
    limits: tuple[Limit, ...]


class RedisAdmission:
    """Decides requests against token buckets shared by every admission process.

    ``decide`` sends the whole batch in one ``EVALSHA`` (up to ``chunk`` requests per
    call): one round trip, each bucket read and written once. Each answer is ``None``
    (admitted) or the ``Limit`` that refused it. Within a call, requests are decided
    in the order given. A request decided before (same id, within ``decision_ttl``)
    gets its first answer again. If Redis fails, the error propagates and nothing is
    decided: the caller offers the batch again later (admission fails closed).
    """

    def __init__(
        self, client: Redis, decision_ttl: int, prefix: str = "admission", chunk: int = 1000
    ) -> None:
        self.client = client
        self.decision_ttl = decision_ttl
        self.prefix = prefix
        self.chunk = chunk
        self._admit = client.register_script(ADMIT)

    async def decide(self, asks: Sequence[Ask]) -> list[Limit | None]:
        decided: list[Limit | None] = []
        for start in range(0, len(asks), self.chunk):
            decided += await self._decide(asks[start : start + self.chunk])
        return decided

    async def _decide(self, asks: Sequence[Ask]) -> list[Limit | None]:
        if not asks:
            return []
        # A few distinct tuples, told apart by identity (hashing each ask's Limits
        # would cost more than the rest of the batch's encoding).
        kinds: dict[int, int] = {}
        shapes: list[list[list[float]]] = []
        for ask in asks:
            if id(ask.limits) not in kinds:
                kinds[id(ask.limits)] = len(shapes) + 1
                shapes.append([[lim.rate, lim.burst] for lim in ask.limits])
        batch = json.dumps(
            {
                "ids": [ask.request_id for ask in asks],
                "keys": [ask.keys for ask in asks],
                "kinds": [kinds[id(ask.limits)] for ask in asks],
                "limits": shapes,
            },
            separators=(",", ":"),
        )
        buckets = list(dict.fromkeys(chain.from_iterable(ask.keys for ask in asks)))
        slice_ = int(time.time()) // self.decision_ttl
        decisions = [f"{self.prefix}:decisions:{slice_ + d}" for d in (1, 0, -1)]
        reply = await self._admit(keys=decisions + buckets, args=[self.decision_ttl, batch])
        text = reply.decode() if isinstance(reply, bytes) else str(reply)
        answers = text.split(",")
        if len(answers) != len(asks):
            raise RuntimeError(f"admission script answered {len(answers)} of {len(asks)} requests")
        return [
            None if answer == "0" else ask.limits[int(answer) - 1]
            for ask, answer in zip(asks, answers, strict=True)
        ]
