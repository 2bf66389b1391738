"""Load-balancing strategies over replicas, behind one small interface.

The notes' list: random, round-robin, weighted round-robin, least connections, power
of two choices, hash, consistent hash. Each ``Balancer`` picks a replica for a call
and is told when the call is done (``done``), so strategies that look at load (least
connections, power of two) see the calls in flight. Deterministic given the seed.
Not thread-safe: one event loop owns a balancer.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from relaybus.streams.sharding.ring import HashRing, blake2b64


class Balancer:
    """Picks one of ``replicas`` per call; ``in_flight`` counts calls not yet done.

    ``pick(key)``: the replica for a call (``key`` matters to the hash strategies
    only); ``done(replica)``: that call finished (success or not). Every strategy
    keeps the counts, so they can be compared on the same workload.
    """

    name = "base"

    def __init__(self, replicas: Sequence[str]) -> None:
        if not replicas:
            raise ValueError("a balancer needs at least one replica")
        if len(set(replicas)) != len(replicas):
            raise ValueError("replica names must be unique")
        self.replicas = list(replicas)
        self.in_flight = dict.fromkeys(self.replicas, 0)

    def pick(self, key: str | None = None) -> str:
        replica = self._choose(key)
        self.in_flight[replica] += 1
        return replica

    def done(self, replica: str) -> None:
        if self.in_flight.get(replica, 0) > 0:
            self.in_flight[replica] -= 1

    def _choose(self, key: str | None) -> str:
        raise NotImplementedError


class RandomBalancer(Balancer):
    """Uniformly at random: no state, even on average, blind to load."""

    name = "random"

    def __init__(self, replicas: Sequence[str], seed: int | None = None) -> None:
        super().__init__(replicas)
        self._rng = random.Random(seed)

    def _choose(self, key: str | None) -> str:
        return self._rng.choice(self.replicas)


class RoundRobin(Balancer):
    """Each replica in turn: exactly even counts, blind to load."""

    name = "round-robin"

    def __init__(self, replicas: Sequence[str]) -> None:
        super().__init__(replicas)
        self._next = 0

    def _choose(self, key: str | None) -> str:
        replica = self.replicas[self._next]
        self._next = (self._next + 1) % len(self.replicas)
        return replica


class WeightedRoundRobin(Balancer):
    """Smooth weighted round-robin (nginx's): over every ``sum(weights)`` picks each
    replica gets exactly its weight, spread out rather than in runs (5,1,1 gives
    a a b a c a a)."""

    name = "weighted-round-robin"

    def __init__(self, weights: Mapping[str, int]) -> None:
        super().__init__(list(weights))
        if any(w < 1 for w in weights.values()):
            raise ValueError("weights must be at least 1")
        self.weights = dict(weights)
        self._current = dict.fromkeys(self.replicas, 0)
        self._total = sum(self.weights.values())

    def _choose(self, key: str | None) -> str:
        for replica in self.replicas:
            self._current[replica] += self.weights[replica]
        best = max(self.replicas, key=lambda r: self._current[r])  # first on ties
        self._current[best] -= self._total
        return best


class LeastConnections(Balancer):
    """The replica with the fewest calls in flight (ties: round-robin among them):
    a slow replica accumulates calls and is picked less."""

    name = "least-connections"

    def __init__(self, replicas: Sequence[str]) -> None:
        super().__init__(replicas)
        self._turn = 0

    def _choose(self, key: str | None) -> str:
        fewest = min(self.in_flight.values())
        tied = [r for r in self.replicas if self.in_flight[r] == fewest]
        self._turn += 1
        return tied[self._turn % len(tied)]


class PowerOfTwoChoices(Balancer):
    """Two replicas at random, the one with fewer calls in flight: nearly as good as
    least connections with a look at only two (no global scan)."""

    name = "power-of-two"

    def __init__(self, replicas: Sequence[str], seed: int | None = None) -> None:
        super().__init__(replicas)
        self._rng = random.Random(seed)

    def _choose(self, key: str | None) -> str:
        if len(self.replicas) == 1:
            return self.replicas[0]
        a, b = self._rng.sample(self.replicas, 2)
        return a if self.in_flight[a] <= self.in_flight[b] else b


class HashBalancer(Balancer):
    """``hash(key) mod N``: a key always goes to the same replica (sticky), but adding
    or removing a replica remaps almost every key. A call without a key goes to the
    first replica."""

    name = "hash"

    def _choose(self, key: str | None) -> str:
        if key is None:
            return self.replicas[0]
        return self.replicas[blake2b64(key.encode()) % len(self.replicas)]


class ConsistentHashBalancer(Balancer):
    """A key goes to its replica on a ``HashRing``: sticky, and a replica's removal
    moves only its own keys. A call without a key goes round-robin."""

    name = "consistent-hash"

    def __init__(self, replicas: Sequence[str], vnodes: int = 160) -> None:
        super().__init__(replicas)
        self.ring = HashRing(self.replicas, vnodes=vnodes)
        self._fallback = RoundRobin(self.replicas)

    def _choose(self, key: str | None) -> str:
        if key is None:
            return self._fallback._choose(None)
        return self.ring.node_for(key)


STRATEGIES = (
    "random",
    "round-robin",
    "weighted-round-robin",
    "least-connections",
    "power-of-two",
    "hash",
    "consistent-hash",
)


def make_balancer(
    strategy: str,
    replicas: Sequence[str],
    weights: Sequence[int] | None = None,
    seed: int | None = None,
) -> Balancer:
    """The balancer named ``strategy`` (one of ``STRATEGIES``) over ``replicas``;
    ``weights`` (one per replica, default 1) for weighted round-robin."""
    if strategy == "random":
        return RandomBalancer(replicas, seed)
    if strategy == "round-robin":
        return RoundRobin(replicas)
    if strategy == "weighted-round-robin":
        given = list(weights or [1] * len(replicas))
        if len(given) != len(replicas):
            raise ValueError("one weight per replica")
        return WeightedRoundRobin(dict(zip(replicas, given, strict=True)))
    if strategy == "least-connections":
        return LeastConnections(replicas)
    if strategy == "power-of-two":
        return PowerOfTwoChoices(replicas, seed)
    if strategy == "hash":
        return HashBalancer(replicas)
    if strategy == "consistent-hash":
        return ConsistentHashBalancer(replicas)
    raise ValueError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
