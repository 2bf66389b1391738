"""Caches with the notes' eviction policies (FIFO, LRU, LFU), one contract, O(1) each."""

from relaybus.streams.cache.policies import FIFOCache, LFUCache, LRUCache

__all__ = ["FIFOCache", "LFUCache", "LRUCache"]
