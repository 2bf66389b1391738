"""UUIDv7 message ids (RFC 9562): time-ordered, so B-tree inserts stay append-mostly."""

from __future__ import annotations

import os
import random
import threading
import time
import uuid

_lock = threading.Lock()
# Random bits without a system call per id (os.urandom costs ~1 us plus a syscall on
# the writers' hot path). Seeded from os.urandom, and re-seeded in a forked child so
# parent and child never draw the same bits. Ids need uniqueness, not secrecy.
_random = random.Random()
os.register_at_fork(after_in_child=_random.seed)
_last_ms = 0
_counter = 0


def uuid7() -> uuid.UUID:
    """A new UUIDv7, strictly increasing within this process.

    Layout: 48-bit Unix milliseconds, version 7, 12-bit ``rand_a`` used as a counter
    seeded randomly each millisecond (RFC 9562 §6.2 method 1), variant, 62 random
    bits. If the counter overflows or the clock steps back, the previous timestamp
    is reused and advanced by one, so ids never go backwards in one process.
    """
    global _last_ms, _counter
    # 62 bits for rand_b and 11 more to seed a new millisecond's counter.
    bits = _random.getrandbits(73)
    with _lock:
        now = time.time_ns() // 1_000_000
        if now > _last_ms:
            _last_ms = now
            _counter = bits >> 62  # 11 bits: leave room to count
        else:
            _counter += 1
            if _counter > 0xFFF:
                _last_ms += 1
                _counter = 0
        ms, counter = _last_ms, _counter
    rand_b = bits & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand_b
    return uuid.UUID(int=value)
