"""Sharded routing: a consistent-hash ring with virtual nodes."""

from relaybus.streams.sharding.ring import HashRing, blake2b64

__all__ = ["HashRing", "blake2b64"]
