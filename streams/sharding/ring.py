"""A consistent-hash ring with virtual nodes.

Each node is placed at ``vnodes`` points on a 64-bit ring (``hash(f"{node}#{i}")``); a
key belongs to the first point clockwise from ``hash(key)``. Adding a node takes over
only the arcs in front of its new points (about ``K/(N+1)`` of K keys); removing one
hands only its own keys to their next points; no other key moves. Many virtual nodes
per node even out the arcs: a node's share has a relative spread of about
1/sqrt(vnodes) (10 nodes x 160 vnodes: max/mean about 1.13, median over node names).
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable, Iterable


def blake2b64(data: bytes) -> int:
    """64-bit BLAKE2b: well spread, stable across processes and Python versions."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class HashRing:
    """Maps keys to nodes. ``vnodes`` points per node, ``hash_fn`` over bytes.

    Lookups are O(log(N·vnodes)) (binary search); adding or removing a node rebuilds
    the sorted point list, O(N·vnodes·log). Deterministic: every process with the same
    nodes, vnodes and hash function maps every key the same way.
    """

    def __init__(
        self,
        nodes: Iterable[str] = (),
        *,
        vnodes: int = 160,
        hash_fn: Callable[[bytes], int] = blake2b64,
    ) -> None:
        if vnodes < 1:
            raise ValueError("vnodes must be at least 1")
        self.vnodes = vnodes
        self._hash = hash_fn
        self._nodes: set[str] = set()
        self._points: list[int] = []
        self._owners: list[str] = []
        for node in nodes:
            self.add(node)

    @property
    def nodes(self) -> frozenset[str]:
        return frozenset(self._nodes)

    def add(self, node: str) -> None:
        """Place ``node`` on the ring (a node already there is left as it is)."""
        if node in self._nodes:
            return
        self._nodes.add(node)
        self._rebuild()

    def remove(self, node: str) -> None:
        """Take ``node`` off the ring; its keys go to the next points clockwise."""
        self._nodes.discard(node)
        self._rebuild()

    def _rebuild(self) -> None:
        points = sorted(
            (self._hash(f"{node}#{i}".encode()), node)
            for node in self._nodes
            for i in range(self.vnodes)
        )
        self._points = [p for p, _ in points]
        self._owners = [n for _, n in points]

    def node_for(self, key: str | bytes) -> str:
        """The node owning ``key``; raises ``LookupError`` on an empty ring."""
        if not self._points:
            raise LookupError("the ring has no nodes")
        data = key.encode() if isinstance(key, str) else key
        index = bisect.bisect_right(self._points, self._hash(data))
        return self._owners[index % len(self._owners)]
