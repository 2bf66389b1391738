"""Each load-balancing strategy's distribution, on simulated calls: even where it
promises evenness, exact where it promises exactness, load-aware where it looks at
load, sticky where it hashes (and consistent hashing moves only a removed replica's
keys)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from relaybus.streams.sharding.balancing import (
    STRATEGIES,
    Balancer,
    ConsistentHashBalancer,
    HashBalancer,
    LeastConnections,
    PowerOfTwoChoices,
    RandomBalancer,
    RoundRobin,
    WeightedRoundRobin,
    make_balancer,
)

REPLICAS = ["a", "b", "c", "d"]


def picks(balancer: Balancer, n: int, keys: bool = False) -> Counter[str]:
    """``n`` calls, each done at once."""
    counts: Counter[str] = Counter()
    for i in range(n):
        replica = balancer.pick(f"key-{i}" if keys else None)
        counts[replica] += 1
        balancer.done(replica)
    return counts


def simulate(balancer: Balancer, calls: int, slow: str, seed: int = 1) -> tuple[Counter[str], int]:
    """Calls arrive one per tick; a call on ``slow`` lasts 20 ticks, others 2 (plus
    jitter). Returns the picks per replica and the largest in-flight count seen."""
    rng = random.Random(seed)
    ending: dict[int, list[str]] = {}
    counts: Counter[str] = Counter()
    worst = 0
    for tick in range(calls):
        for replica in ending.pop(tick, []):
            balancer.done(replica)
        replica = balancer.pick(None)
        counts[replica] += 1
        worst = max(worst, max(balancer.in_flight.values()))
        length = (20 if replica == slow else 2) + rng.randint(0, 2)
        ending.setdefault(tick + length, []).append(replica)
    return counts, worst


def test_random_is_even_on_average() -> None:
    counts = picks(RandomBalancer(REPLICAS, seed=3), 100_000)
    assert all(abs(c - 25_000) < 1_000 for c in counts.values()), counts


def test_round_robin_is_exactly_even_and_in_turn() -> None:
    balancer = RoundRobin(REPLICAS)
    assert [balancer.pick() for _ in range(8)] == REPLICAS * 2
    assert set(picks(RoundRobin(REPLICAS), 4_000).values()) == {1_000}


def test_weighted_round_robin_gives_each_its_weight_spread_out() -> None:
    balancer = WeightedRoundRobin({"a": 5, "b": 1, "c": 1})
    assert "".join(balancer.pick() for _ in range(7)) == "aabacaa"  # nginx's sequence
    counts = picks(WeightedRoundRobin({"a": 3, "b": 2, "c": 1}), 6_000)
    assert counts == Counter(a=3_000, b=2_000, c=1_000)


def test_least_connections_sends_less_to_a_slow_replica() -> None:
    counts, _ = simulate(LeastConnections(REPLICAS), 20_000, slow="d")
    blind, _ = simulate(RoundRobin(REPLICAS), 20_000, slow="d")
    assert counts["d"] < 0.5 * blind["d"]
    assert blind["d"] == 5_000


def test_power_of_two_keeps_in_flight_lower_than_random() -> None:
    _, p2c = simulate(PowerOfTwoChoices(REPLICAS, seed=5), 20_000, slow="d")
    _, rand = simulate(RandomBalancer(REPLICAS, seed=5), 20_000, slow="d")
    counts, _ = simulate(PowerOfTwoChoices(REPLICAS, seed=5), 20_000, slow="d")
    assert p2c < rand
    assert counts["d"] < 5_000


def test_hash_is_sticky_and_even_but_remaps_on_change() -> None:
    balancer = HashBalancer(REPLICAS)
    assert {balancer.pick("customer-7") for _ in range(10)} == {balancer.pick("customer-7")}
    counts = picks(HashBalancer(REPLICAS), 100_000, keys=True)
    assert all(abs(c - 25_000) < 1_000 for c in counts.values()), counts
    fewer = HashBalancer(REPLICAS[:3])
    moved = sum(fewer.pick(f"key-{i}") != balancer.pick(f"key-{i}") for i in range(10_000))
    assert moved > 5_000  # mod N: most keys move when N changes


def test_consistent_hash_is_sticky_and_moves_only_a_removed_replicas_keys() -> None:
    balancer = ConsistentHashBalancer(REPLICAS)
    fewer = ConsistentHashBalancer(REPLICAS[:3])
    for i in range(20_000):
        before = balancer.pick(f"key-{i}")
        after = fewer.pick(f"key-{i}")
        assert after == before or before == "d"
    counts = picks(ConsistentHashBalancer(REPLICAS), 100_000, keys=True)
    assert max(counts.values()) / min(counts.values()) < 1.3, counts


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_counts_calls_in_flight(strategy: str) -> None:
    balancer = make_balancer(strategy, REPLICAS, weights=[1, 2, 3, 4], seed=1)
    held = [balancer.pick(f"k{i}") for i in range(10)]
    assert sum(balancer.in_flight.values()) == 10
    for replica in held:
        balancer.done(replica)
    assert sum(balancer.in_flight.values()) == 0
    balancer.done("a")  # a stray done never goes negative
    assert balancer.in_flight["a"] == 0


def test_bad_configurations_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="unknown strategy"):
        make_balancer("fastest", REPLICAS)
    with pytest.raises(ValueError, match="at least one replica"):
        RoundRobin([])
    with pytest.raises(ValueError, match="unique"):
        RoundRobin(["a", "a"])
    with pytest.raises(ValueError, match="one weight per replica"):
        make_balancer("weighted-round-robin", REPLICAS, weights=[1])
