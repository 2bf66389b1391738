"""Kafka adapter helpers: size estimate and header encoding."""

from __future__ import annotations

from relaybus.brokers.kafka import record_size
from relaybus.message import Message


def test_record_size_is_an_upper_bound_of_key_value_and_headers() -> None:
    m = Message.from_data("t", "a", "ключ", {"x": "y" * 1000})
    raw = (
        len(m.payload)
        + len("ключ".encode())
        + sum(len(k) + len(v.encode()) for k, v in m.headers().items())
    )
    assert record_size(m) > raw


def test_kafka_headers_equal_the_generic_headers_encoded() -> None:
    plain = Message.from_data("order.created", "order", "42", {"a": 1})
    traced = Message(
        type="t",
        aggregatetype="a",
        aggregateid="k",
        payload=b"{}",
        correlation_id="c",
        extra_headers={"x-tenant": "acme"},
    )
    for m in (plain, traced):
        assert dict(m.kafka_headers()) == {k: v.encode() for k, v in m.headers().items()}
