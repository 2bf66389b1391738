"""A consistent-hash ring with virtual nodes (and multi-probe lookups).

Each node is placed at ``vnodes`` points on a 64-bit ring (``hash(f"{node}#{i}")``).
With ``probes=1`` (the classic ring) a key belongs to the first point clockwise from
``hash(key)``. Many virtual nodes even out the arcs, but only as 1/sqrt(vnodes): 10
nodes x 160 vnodes give max/mean about 1.13 (median over node names; 1.26 for the
names ``shard-0..9``).

With ``probes=p`` (multi-probe consistent hashing, Appleton & O'Reilly 2015) the key
is looked up at ``p`` independent positions (``hash(key)``, ``hash(key + suffix_j)``)
and belongs to the point *closest* clockwise from any of them. A node with a long
arc no longer wins proportionally more keys: at 160 vnodes, 4 probes give max/mean
1.06 (1 M keys, for each of three sets of 10 names; the classic lookup gave 1.08 to
1.25), at about a quarter of the classic lookup's speed. The consistency argument is
unchanged: adding a node only adds points, so a key moves only if a new point becomes
its closest (it moves *to* the new node); removing a node
only removes its points, so only its own keys move.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable, Iterable


def blake2b64(data: bytes) -> int:
    """64-bit BLAKE2b: well spread, stable across processes and Python versions."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


_RING = 1 << 64
_PROBE_SUFFIX = [f"\x00probe{j}".encode() for j in range(64)]


class HashRing:
    """Maps keys to nodes. ``vnodes`` points per node, ``hash_fn`` over bytes (to 64
    bits), ``probes`` lookups per key (1: the classic ring).

    Lookups are O(probes·log(N·vnodes)) (a hash and a binary search per probe); adding or
    removing a node rebuilds the sorted point list, O(N·vnodes·log). Deterministic:
    every process with the same nodes, vnodes, probes and hash function maps every
    key the same way.
    """

    def __init__(
        self,
        nodes: Iterable[str] = (),
        *,
        vnodes: int = 160,
        probes: int = 4,
        hash_fn: Callable[[bytes], int] = blake2b64,
    ) -> None:
        if vnodes < 1 or not 1 <= probes <= len(_PROBE_SUFFIX):
            raise ValueError(f"vnodes must be at least 1 and probes 1..{len(_PROBE_SUFFIX)}")
        self.vnodes = vnodes
        self.probes = probes
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
        points = self._points
        count = len(points)
        position = self._hash(data) % _RING
        best_index = bisect.bisect_right(points, position) % count
        if self.probes == 1:
            return self._owners[best_index]
        best = (points[best_index] - position) % _RING
        for probe in range(1, self.probes):
            # Independent positions (not fixed offsets from the first: points placed
            # once would then weigh the same way for every key).
            position = self._hash(data + _PROBE_SUFFIX[probe]) % _RING
            index = bisect.bisect_right(points, position) % count
            distance = (points[index] - position) % _RING
            if distance < best:
                best, best_index = distance, index
        return self._owners[best_index]
