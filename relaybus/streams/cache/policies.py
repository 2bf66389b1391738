"""FIFO, LRU and LFU caches: bounded maps whose ``put`` evicts one victim when full.

Contract (shared, ``tests/unit/test_cache_contract.py``): never more than
``capacity`` entries; ``get`` of a present key returns the last value put; when a
``put`` of a new key finds the cache full, exactly one entry is evicted, the one the
policy names, and ``put`` returns it (``None`` when nothing was evicted). Every
operation is O(1). Not thread-safe (one event loop owns each cache).

- FIFO: the victim is the key inserted longest ago (reads and updates don't matter).
- LRU: the victim is the key least recently read or written (a hash map over a
  doubly linked list: ``OrderedDict`` is exactly that, in C).
- LFU: the victim is the least frequently used key (reads and writes count), the
  least recently used among equals; frequency buckets are kept as a linked list of
  ordered sets, so finding the victim and moving a key up a bucket are O(1).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class _Bounded(Generic[K, V]):
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity

    def __len__(self) -> int:
        raise NotImplementedError


class FIFOCache(_Bounded[K, V]):
    """First in, first out."""

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._data: OrderedDict[K, V] = OrderedDict()

    def _used(self, key: K) -> None:
        """A read or an update of ``key``: FIFO's order does not change."""

    def get(self, key: K) -> V | None:
        if key not in self._data:
            return None
        self._used(key)
        return self._data[key]

    def put(self, key: K, value: V) -> K | None:
        if key in self._data:
            self._data[key] = value
            self._used(key)
            return None
        victim = None
        if len(self._data) >= self.capacity:
            victim, _ = self._data.popitem(last=False)
        self._data[key] = value
        return victim

    def pop(self, key: K) -> V | None:
        return self._data.pop(key, None)

    def peek(self, key: K) -> V | None:
        """The value of ``key`` without counting as a use (no reordering)."""
        return self._data.get(key)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data


class LRUCache(FIFOCache[K, V]):
    """Least recently used: FIFO whose reads and updates move a key to the back."""

    def _used(self, key: K) -> None:
        self._data.move_to_end(key)


class LFUCache(_Bounded[K, V]):
    """Least frequently used; ties go to the least recently used."""

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._values: dict[K, V] = {}
        self._freq: dict[K, int] = {}
        # frequency -> keys of that frequency, least recently used first
        self._buckets: dict[int, OrderedDict[K, None]] = {}
        self._min = 0

    def _touch(self, key: K) -> None:
        f = self._freq[key]
        bucket = self._buckets[f]
        del bucket[key]
        if not bucket:
            del self._buckets[f]
            if self._min == f:
                self._min = f + 1
        self._freq[key] = f + 1
        self._buckets.setdefault(f + 1, OrderedDict())[key] = None

    def get(self, key: K) -> V | None:
        if key not in self._values:
            return None
        self._touch(key)
        return self._values[key]

    def put(self, key: K, value: V) -> K | None:
        if key in self._values:
            self._values[key] = value
            self._touch(key)
            return None
        victim = None
        if len(self._values) >= self.capacity:
            bucket = self._buckets[self._min]
            victim, _ = bucket.popitem(last=False)
            if not bucket:
                del self._buckets[self._min]
            del self._values[victim], self._freq[victim]
        self._values[key] = value
        self._freq[key] = 1
        self._buckets.setdefault(1, OrderedDict())[key] = None
        self._min = 1
        return victim

    def pop(self, key: K) -> V | None:
        if key not in self._values:
            return None
        f = self._freq.pop(key)
        bucket = self._buckets[f]
        del bucket[key]
        if not bucket:
            del self._buckets[f]
            if self._min == f:
                self._min = min(self._buckets, default=0)  # O(distinct frequencies), rare
        return self._values.pop(key)

    def peek(self, key: K) -> V | None:
        """The value of ``key`` without counting as a use (its frequency stays)."""
        return self._values.get(key)

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key: object) -> bool:
        return key in self._values
