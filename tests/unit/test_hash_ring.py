"""The consistent-hash ring: balance with virtual nodes and multi-probe lookups, and
minimal movement when a node is added or removed (1 M keys, 10 nodes x 160 vnodes)."""

from __future__ import annotations

import statistics
import zlib
from collections import Counter

import pytest

from relaybus.streams.sharding import HashRing

# 200 000 keys: 20 000 a shard, so sampling moves a shard's share by under 1 %
# against the 10 % bound (the ring's docstring figures were measured with 1 M).
KEYS = [f"product-{n}" for n in range(200_000)]
SHARDS = [f"shard-{n}" for n in range(10)]


@pytest.fixture(scope="module")
def placed() -> tuple[HashRing, list[str]]:
    ring = HashRing(SHARDS, vnodes=160)
    return ring, [ring.node_for(key) for key in KEYS]


def arc_imbalance(ring: HashRing) -> float:
    """max/mean of the nodes' exact shares of the ring (no key sampling)."""
    points, owners = ring._points, ring._owners
    share: Counter[str] = Counter()
    for i, point in enumerate(points):
        previous = points[i - 1] if i else points[-1] - 2**64
        share[owners[i]] += (point - previous) / 2**64
    return max(share.values()) / statistics.mean(share.values())


def test_virtual_nodes_even_out_the_classic_ring() -> None:
    # A node's share is the sum of its vnodes' arcs: relative spread about 1/sqrt(v).
    # Over 50 sets of 10 node names the median max/mean stays within 2/sqrt(v).
    def median_imbalance(vnodes: int) -> float:
        return statistics.median(
            arc_imbalance(HashRing([f"n{t}-{i}" for i in range(10)], vnodes=vnodes, probes=1))
            for t in range(50)
        )

    assert median_imbalance(160) <= 1 + 2 / 160**0.5
    assert median_imbalance(1) > 1.5


def test_classic_ring_keys_follow_the_arcs() -> None:
    ring = HashRing(SHARDS, vnodes=160, probes=1)
    load = Counter(ring.node_for(key) for key in KEYS)
    keyed = max(load.values()) / statistics.mean(load.values())
    assert keyed == pytest.approx(arc_imbalance(ring), abs=0.03)


def test_ten_shards_160_vnodes_multi_probe_within_ten_percent(
    placed: tuple[HashRing, list[str]],
) -> None:
    ring, owners = placed
    assert ring.probes == 4  # the default
    load = Counter(owners)
    assert set(load) == set(SHARDS)
    assert max(load.values()) / statistics.mean(load.values()) <= 1.10
    # The classic lookup on the same points is worse for these names (about 1.25).
    classic = HashRing(SHARDS, vnodes=160, probes=1)
    assert arc_imbalance(classic) > max(load.values()) / statistics.mean(load.values())


def test_adding_an_eleventh_shard_moves_only_keys_it_takes(
    placed: tuple[HashRing, list[str]],
) -> None:
    ring, before = placed
    bigger = HashRing([*SHARDS, "shard-10"], vnodes=160)
    moved = [(b, bigger.node_for(k)) for k, b in zip(KEYS, before, strict=True)]
    changed = [(b, a) for b, a in moved if b != a]
    assert all(a == "shard-10" for _, a in changed)  # every moved key went to the new one
    assert len(changed) <= 1.1 * len(KEYS) / 11
    assert ring.nodes == frozenset(SHARDS)


def test_removing_a_shard_moves_only_its_keys(placed: tuple[HashRing, list[str]]) -> None:
    _, before = placed
    smaller = HashRing(SHARDS, vnodes=160)
    smaller.remove("shard-3")
    for key, owner in zip(KEYS[:100_000], before[:100_000], strict=True):
        now = smaller.node_for(key)
        assert now == owner or owner == "shard-3"
        assert now != "shard-3"


def test_the_hash_function_is_configurable() -> None:
    crc = HashRing(SHARDS, vnodes=160, hash_fn=zlib.crc32)
    with pytest.raises(ValueError, match=r"probes 1\.\.64"):
        HashRing(SHARDS, probes=0)
    assert {crc.node_for(k) for k in KEYS[:20_000]} == set(SHARDS)


def test_mapping_is_deterministic_and_an_empty_ring_says_so() -> None:
    assert HashRing(SHARDS).node_for("k") == HashRing(reversed(SHARDS)).node_for("k")
    with pytest.raises(LookupError, match="no nodes"):
        HashRing().node_for("k")
