from __future__ import annotations

import itertools

import pytest

from relaybus.snowflake import EPOCH_MS, ClockMovedBackwards, Snowflake, parse


class FakeClock:
    def __init__(self, start: int) -> None:
        self.now = start
        self.reads = 0
        self.script: list[int] = []

    def __call__(self) -> int:
        self.reads += 1
        if self.script:
            self.now = self.script.pop(0)
        return self.now


def test_id_layout_round_trips() -> None:
    clock = FakeClock(EPOCH_MS + 12345)
    gen = Snowflake(7, clock_ms=clock)
    ms, worker, seq = parse(gen.next_id())
    assert (ms, worker, seq) == (EPOCH_MS + 12345, 7, 0)
    assert parse(gen.next_id())[2] == 1


def test_ids_strictly_increase_and_sequence_overflow_moves_to_next_ms() -> None:
    clock = FakeClock(EPOCH_MS + 1000)
    gen = Snowflake(1, clock_ms=clock)
    ids = [gen.next_id() for _ in range(4096)]
    clock.script = [EPOCH_MS + 1000, EPOCH_MS + 1000, EPOCH_MS + 1001]
    ids.append(gen.next_id())  # sequence exhausted: must wait for the next millisecond
    assert all(a < b for a, b in itertools.pairwise(ids))
    assert parse(ids[-1])[0] == EPOCH_MS + 1001


def test_small_clock_rollback_waits_and_never_goes_backwards() -> None:
    clock = FakeClock(EPOCH_MS + 5000)
    gen = Snowflake(2, clock_ms=clock, max_backwards_ms=50)
    before = gen.next_id()
    clock.script = [EPOCH_MS + 4990, EPOCH_MS + 4995, EPOCH_MS + 5000]
    after = gen.next_id()
    assert after > before


def test_large_clock_rollback_fails_loudly() -> None:
    clock = FakeClock(EPOCH_MS + 5000)
    gen = Snowflake(3, clock_ms=clock, max_backwards_ms=50)
    gen.next_id()
    clock.now = EPOCH_MS + 1000
    with pytest.raises(ClockMovedBackwards):
        gen.next_id()


def test_worker_id_range_is_checked() -> None:
    with pytest.raises(ValueError, match="worker_id"):
        Snowflake(1024)
