"""Any exception raised while turning one record into a message is that record's fault
(issue 31 §1): every decode entry point either returns a message or refuses with
``InvalidMessage`` (the loops dead-letter it and go on), and the faust agents' readers
return None; nothing else escapes, so no record can make a loop retry its batch.
The same records are written with kcat into a worker's topic and into admission's
input in tests/integration/test_trust_boundary.py and tests/e2e/test_shop_trust.py."""

from __future__ import annotations

import contextlib
import json
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaybus.consumers import cdc
from relaybus.consumers.incoming import InvalidMessage, WireLimits, decode, read_headers
from relaybus.shop.contract import shop_events
from relaybus.shop.producers.orders.views import OrderViews
from relaybus.shop.streams.readmodel.agent import read_event
from relaybus.shop.streams.saga.agent import read_input

DEBEZIUM = "__debezium.context.connectorName"
NAMES = [
    "id",
    "type",
    "occurred_at",
    "note",
    DEBEZIUM,
    cdc.PACKED_HEADERS,
    "x-attempts",
    "schema_version",
]

timestamps = st.one_of(
    st.integers(min_value=2 * 10**17, max_value=10**19).map(str),
    st.integers(min_value=-(10**40), max_value=10**40).map(str),
    st.text(alphabet="0123456789", min_size=1, max_size=60),
    st.text(alphabet="0123456789٣²-+. e", max_size=30),
)
packed = st.one_of(
    st.text(max_size=40),
    st.dictionaries(st.text(max_size=12), st.text(max_size=12), max_size=4).map(json.dumps),
    st.sampled_from(["[]", "null", '{"a": 1}', '{"id": "x"}', "[" * 5000, '{"a": "\\ud800"}']),
)
values = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=40).map(str.encode),
    timestamps.map(str.encode),
    packed.map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.just(str(uuid.uuid4()).encode()),
)
header_maps = st.lists(
    st.tuples(st.one_of(st.sampled_from(NAMES), st.text(max_size=10)), values), max_size=10
)
bodies = st.one_of(
    st.binary(max_size=60),
    st.sampled_from([b"{}", b'{"order_id": 1, "version": 1}', b"[" * 3000, b'{"a": 1e999}']),
)


def _decode(pairs: list[tuple[str, bytes]], body: bytes) -> None:
    headers = read_headers(pairs, WireLimits(max_header_bytes=4096))
    decode(body, headers, key="k", source="t", partition=0, offset=1)


@settings(max_examples=400, deadline=None)
@given(pairs=header_maps, body=bodies)
def test_every_decode_entry_point_returns_or_refuses(
    pairs: list[tuple[str, bytes]], body: bytes
) -> None:
    with contextlib.suppress(InvalidMessage):  # dead-lettered: the record's verdict
        _decode(pairs, body)
    # The faust agents' readers and the API's tail never raise: they skip.
    read_input(pairs, body, shop_events())
    read_event(pairs, body)
    OrderViews(None, None, None, lambda order: 0).on_record(0, 1, b"k", body)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(stamp=timestamps)
def test_debezium_timestamps_of_any_size_are_decoded_or_refused(stamp: str) -> None:
    headers = {"id": str(uuid.uuid4()), "type": "t", DEBEZIUM: "pg", "occurred_at": stamp}
    try:
        message = decode(b"{}", headers, key="k", source="t")
    except InvalidMessage:
        return
    shown = message.headers["occurred_at"]
    assert shown == stamp or (stamp.isdigit() and shown.endswith("Z"))  # text or RFC 3339


@pytest.mark.parametrize("stamp", ["9" * 18, "253402300800000000", "9" * 40])
def test_the_reported_overflow_record_is_refused_as_a_bad_header(stamp: str) -> None:
    """The record of the report: an 18-digit epoch past year 9999 overflowed ``datetime``
    (an ``OverflowError`` the loops took for their own failure)."""
    headers = {"id": str(uuid.uuid4()), "type": "t", DEBEZIUM: "pg", "occurred_at": stamp}
    with pytest.raises(InvalidMessage) as err:
        decode(b"{}", headers, key="k", source="t")
    assert err.value.reason == "bad-header"
    last = {**headers, "occurred_at": "253402300799999999"}
    assert decode(b"{}", last, key="k", source="t").headers["occurred_at"].startswith("9999-")


def test_an_unforeseen_error_becomes_the_records_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    """The class fix, not the instance: whatever a decoder raises is ``undecodable``."""

    def broken(headers: Any) -> dict[str, str]:
        raise OverflowError("date value out of range")

    monkeypatch.setattr(cdc, "normalize", broken)
    headers = {"id": str(uuid.uuid4()), "type": "t", DEBEZIUM: "pg"}
    with pytest.raises(InvalidMessage) as err:
        decode(b"{}", headers, key="k", source="t")
    assert err.value.reason == "undecodable"
    assert "OverflowError" in err.value.detail
