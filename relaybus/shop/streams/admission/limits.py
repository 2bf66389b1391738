"""Admission's limits as token buckets in Redis, checked together in one script."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from relaybus.shop.settings import refills_within

# One call decides a whole batch of requests, in order, atomically.
#
# State lives in time-sliced hashes: slice k = client time // W (W = the decision TTL),
# each hash expiring 2W + 60 s after its last write. A call names slices k+1, k and
# k-1, reads all three and writes slice k, so clients whose clocks differ by less
# than W read each other's writes.
# KEYS[1..3] = the decision hashes of slices k+1, k, k-1 (request id → answer);
# KEYS[4..6] = the bucket hashes of slices k+1, k, k-1 (bucket name →
#              "tokens:microseconds"; the newest of the three copies counts).
# ARGV[1]    = W (s); ARGV[2] = JSON {"ids": [request id, …], "keys": [[bucket name,
#              …], …] (one list per request), "kinds": [kind number, …] (one per
#              request), "limits": [[[rate, burst], …], …] (one list per kind, one
#              pair per bucket of a request of that kind)}.
# Returns one string, the answers in request order joined by ",": per request "0"
# (admitted) or "j", refused by its j-th bucket.
#
# All-or-nothing per request: tokens are taken from every bucket of a request only if
# each has one, so a request the global limit refuses does not use up its customer's
# budget. A request decided before (same id, within W) gets its first answer again and
# takes nothing: a redelivery after a crash is harmless. Each bucket is read once and
# written once per batch, with the rate and burst of the first request that names it;
# the server's clock (TIME) is the only clock for tokens. A bucket whose slices have
# expired is full, which is right because W is at least every bucket's refill time
# (``RedisAdmission`` checks). Why hashes, one argument and one string: one HSET of a
# batch's buckets instead of one SET … PX per bucket, no key list for the client to
# encode, and no array reply for it to parse element by element — each of those cost
# more than the decisions. All keys in one script: a single Redis (or one hash slot).
ADMIT = """
local ttl = tonumber(ARGV[1])
local batch = cjson.decode(ARGV[2])
local ids, names, kinds, limits = batch.ids, batch.keys, batch.kinds, batch.limits
local n = #ids
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local min, find, sub = math.min, string.find, string.sub
-- The distinct buckets, numbered in order of first use.
local index, buckets = {}, {}
for r = 1, n do
  for _, name in ipairs(names[r]) do
    if index[name] == nil then
      buckets[#buckets + 1] = name
      index[name] = #buckets
    end
  end
end
local copies = {}
if #buckets > 0 then
  for s = 1, 3 do copies[s] = redis.call('HMGET', KEYS[3 + s], unpack(buckets)) end
end
local seen = {}
for s = 1, 3 do seen[s] = redis.call('HMGET', KEYS[s], unpack(ids)) end
local tokens, dirty = {}, {}
local out, written, mine, own = {}, {}, {}, {}
for r = 1, n do
  local id = ids[r]
  local prior = mine[id] or seen[2][r] or seen[1][r] or seen[3][r]
  if prior then
    out[r] = prior
  else
    local keys, kind = names[r], limits[kinds[r]]
    local m = #keys
    local refused = 0
    for j = 1, m do
      local b = index[keys[j]]
      own[j] = b
      if tokens[b] == nil then
        -- First use of this bucket in the batch: its newest state, refilled to now.
        local rate, burst = tonumber(kind[j][1]), tonumber(kind[j][2])
        local tk, at = burst, nil
        for s = 1, 3 do
          local state = copies[s][b]
          if state then
            local sep = find(state, ':', 1, true)
            local when = tonumber(sub(state, sep + 1))
            if at == nil or when > at then
              at = when
              tk = tonumber(sub(state, 1, sep - 1))
            end
          end
        end
        if at ~= nil and now > at then tk = min(burst, tk + (now - at) * rate / 1000000) end
        tokens[b] = tk
      end
      if refused == 0 and tokens[b] < 1 then refused = j end
    end
    if refused == 0 then
      for j = 1, m do
        local b = own[j]
        tokens[b] = tokens[b] - 1
        dirty[b] = true
      end
    end
    local answer = tostring(refused)
    out[r] = answer
    mine[id] = answer
    written[#written + 1] = id
    written[#written + 1] = answer
  end
end
local at = ':' .. string.format('%.0f', now)
local states = {}
for b, _ in pairs(dirty) do
  states[#states + 1] = buckets[b]
  states[#states + 1] = string.format('%.17g', tokens[b]) .. at
end
if #states > 0 then
  redis.call('HSET', KEYS[5], unpack(states))
  redis.call('EXPIRE', KEYS[5], 2 * ttl + 60)
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
    """One request to decide: its id (the decision's key), its buckets' names (e.g.
    ``user:ann``, within the admission's prefix) and their limits (``limits[j]`` is
    the bucket ``keys[j]``'s). Asks of one kind should share one ``limits`` tuple:
    the script is told each distinct tuple once."""

    request_id: str
    keys: tuple[str, ...]
    limits: tuple[Limit, ...]


class RedisAdmission:
    """Decides requests against token buckets shared by every admission process.

    ``decide`` sends the whole batch in one ``EVALSHA`` (up to ``chunk`` requests per
    call): one round trip, each bucket read and written once. Buckets and decisions
    live in hashes sliced by ``decision_ttl``, which must be at least every limit's
    refill time (``burst / rate``): ``decide`` raises ``ValueError`` otherwise, as a
    bucket older than a slice is read as full. Each answer is ``None``
    (admitted) or the ``Limit`` that refused it. Within a call, requests are decided
    in the order given. A request decided before (same id, within ``decision_ttl``)
    gets its first answer again. If Redis fails, the error propagates and nothing is
    decided: the caller offers the batch again later (admission fails closed).
    """

    def __init__(
        self,
        client: Redis,
        decision_ttl: int,
        prefix: str = "admission",
        chunk: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.clock = clock  # picks the slices only; tokens use the server's clock
        self.decision_ttl = decision_ttl
        self.prefix = prefix
        self.chunk = chunk
        self._admit = client.register_script(ADMIT)

    HASHES = ("decisions", "buckets")

    def _check(self, limit: Limit) -> None:
        """A limit must refill within a slice: a bucket whose slices expired is read
        as full, which is only right if it would have refilled by then."""
        if not refills_within(limit.rate, limit.burst, self.decision_ttl):
            raise ValueError(
                f"{limit.describe()} takes longer to refill than the decision TTL "
                f"({self.decision_ttl} s): raise the TTL or the rate (a limit that never "
                "refills must have burst 0)"
            )

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
                for limit in ask.limits:
                    self._check(limit)
        batch = json.dumps(
            {
                "ids": [ask.request_id for ask in asks],
                "keys": [ask.keys for ask in asks],
                "kinds": [kinds[id(ask.limits)] for ask in asks],
                "limits": shapes,
            },
            separators=(",", ":"),
        )
        slice_ = int(self.clock()) // self.decision_ttl
        keys = [f"{self.prefix}:{what}:{slice_ + d}" for what in self.HASHES for d in (1, 0, -1)]
        reply = await self._admit(keys=keys, args=[self.decision_ttl, batch])
        text = reply.decode() if isinstance(reply, bytes) else str(reply)
        answers = text.split(",")
        if len(answers) != len(asks):
            raise RuntimeError(f"admission script answered {len(answers)} of {len(asks)} requests")
        return [
            None if answer == "0" else ask.limits[int(answer) - 1]
            for ask, answer in zip(asks, answers, strict=True)
        ]
