"""One contract suite for FIFO, LRU and LFU: each is checked, operation by operation,
against a slow reference model of its policy (hypothesis generates the operations)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaybus.streams.cache import FIFOCache, LFUCache, LRUCache


class Reference:
    """The policy written the obvious, slow way: every key with its insertion time,
    last use and use count; the victim is the minimum by the policy's ordering."""

    def __init__(self, policy: str, capacity: int) -> None:
        self.policy, self.capacity = policy, capacity
        self.values: dict[int, int] = {}
        self.inserted: dict[int, int] = {}
        self.used: dict[int, int] = {}
        self.count: dict[int, int] = {}
        self.clock = 0

    def _use(self, key: int) -> None:
        self.clock += 1
        self.used[key] = self.clock
        self.count[key] = self.count.get(key, 0) + 1

    def get(self, key: int) -> int | None:
        if key not in self.values:
            return None
        self._use(key)
        return self.values[key]

    def put(self, key: int, value: int) -> int | None:
        if key in self.values:
            self.values[key] = value
            self._use(key)
            return None
        victim = None
        if len(self.values) >= self.capacity:
            order: dict[str, Any] = {
                "fifo": lambda k: self.inserted[k],
                "lru": lambda k: self.used[k],
                "lfu": lambda k: (self.count[k], self.used[k]),
            }
            victim = min(self.values, key=order[self.policy])
            for table in (self.values, self.inserted, self.used, self.count):
                table.pop(victim, None)
        self.values[key] = value
        self.clock += 1
        self.inserted[key] = self.clock
        self.used[key] = self.clock
        self.count[key] = 1
        return victim


CACHES = {"fifo": FIFOCache, "lru": LRUCache, "lfu": LFUCache}
operations = st.lists(
    st.tuples(st.sampled_from(["get", "put"]), st.integers(0, 12), st.integers()),
    max_size=400,
)


@pytest.mark.parametrize("policy", CACHES)
@given(capacity=st.integers(1, 8), ops=operations)
@settings(max_examples=300, deadline=None)
def test_cache_matches_its_reference_model(policy: str, capacity: int, ops: list[Any]) -> None:
    cache: Any = CACHES[policy](capacity)
    model = Reference(policy, capacity)
    for op, key, value in ops:
        if op == "get":
            assert cache.get(key) == model.get(key), (op, key)
        else:
            assert cache.put(key, value) == model.put(key, value), (op, key)
        assert len(cache) == len(model.values) <= capacity
        assert all(k in cache for k in model.values)


@pytest.mark.parametrize("policy", CACHES)
def test_pop_removes_and_the_cache_goes_on(policy: str) -> None:
    cache: Any = CACHES[policy](2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.pop("a") == 1
    assert cache.pop("a") is None
    assert cache.put("c", 3) is None  # room again: nothing evicted
    assert len(cache) == 2
    assert cache.get("b") == 2


def test_the_three_policies_pick_different_victims() -> None:
    victims = {}
    for policy, kind in CACHES.items():
        cache: Any = kind(3)
        for key in "abc":
            cache.put(key, 0)
        for key in "bbaac":  # counts a=3 b=3 c=2; last used: b, then a, then c
            cache.get(key)
        victims[policy] = cache.put("d", 0)
    # first in; least recently used; least frequently used
    assert victims == {"fifo": "a", "lru": "b", "lfu": "c"}
