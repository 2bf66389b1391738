"""Replay's pure parts: the ``x-replay-of`` value read back on resume (hostile values
included), the bitmap of copied offsets, the copy filter, and reprocess ids."""

from __future__ import annotations

import pytest

from relaybus.brokers.kafka_admin import PartitionWindow
from relaybus.brokers.kafka_replay import (
    CopiedSet,
    CopyFilter,
    parse_replay_of,
    replay_of,
    reprocess_ids,
)
from relaybus.headers import REPLAY_OF, is_reserved


def test_replay_of_round_trips_and_is_reserved() -> None:
    assert parse_replay_of(replay_of("orders.v1", 3, 12345), "orders.v1") == (3, 12345)
    assert is_reserved(REPLAY_OF)
    assert is_reserved("X-Replay-Anything")


@pytest.mark.parametrize(
    "value",
    [
        b"other.topic/3/12",
        b"orders.v1/3",
        b"orders.v1/-1/12",
        b"orders.v1/3/1e3",
        b"orders.v1/3/12/",
        b"orders.v1/\xff/12",
        b"orders.v1/" + b"1" * 400 + b"/1",
        b"<script>orders.v1</script>/1/2",
        b"",
    ],
)
def test_a_foreign_or_hostile_replay_of_marks_nothing(value: bytes) -> None:
    assert parse_replay_of(value, "orders.v1") is None


def test_the_copied_set_holds_one_bit_per_window_offset() -> None:
    copied = CopiedSet({0: PartitionWindow(0, 100, 120, None, None)})
    assert copied.bits[0] == bytearray(3)
    assert copied.add(0, 100)
    assert copied.add(0, 119)
    assert not copied.add(0, 120)  # outside the window: ignored
    assert not copied.add(5, 100)  # another partition: ignored
    assert (0, 100) in copied
    assert (0, 101) not in copied
    assert (0, 119) in copied
    assert copied.count() == 2


def test_the_filter_matches_type_and_key() -> None:
    both = CopyFilter(type="order.created", key="k1")
    assert both.wants(b"k1", {"type": b"order.created"})
    assert not both.wants(b"k2", {"type": b"order.created"})
    assert not both.wants(b"k1", {"type": b"order.paid"})
    assert not both.wants(None, {})
    assert CopyFilter().wants(None, {})


def test_reprocess_ids_are_new_and_stable_per_copy() -> None:
    first, again, other = reprocess_ids("41"), reprocess_ids("41"), reprocess_ids("42")
    headers = [("id", b"0190-old"), ("type", b"t")]
    new = dict(first(0, 7, headers))["id"]
    assert new != b"0190-old"
    assert dict(again(0, 7, headers))["id"] == new  # a resumed copy: the same new id
    assert dict(first(0, 8, headers))["id"] != new
    assert dict(other(0, 7, headers))["id"] != new  # another replay: other ids
    assert [n for n, _ in first(0, 7, headers)].count("id") == 1
