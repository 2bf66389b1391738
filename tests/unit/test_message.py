from __future__ import annotations

from datetime import UTC, datetime

from relaybus.message import Message, rfc3339


def test_headers_carry_the_design_contract_names() -> None:
    m = Message.from_data("order.created", "order", "42", {"total": 10})
    m = Message(
        type=m.type,
        aggregatetype=m.aggregatetype,
        aggregateid=m.aggregateid,
        payload=m.payload,
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        correlation_id="c1",
        causation_id="c0",
    )
    h = m.headers()
    assert set(h) == {
        "id",
        "type",
        "aggregatetype",
        "aggregateid",
        "occurred_at",
        "content-type",
        "schema_version",
        "traceparent",
        "correlation_id",
        "causation_id",
    }
    assert h["id"] == str(m.id)
    assert h["content-type"] == "application/json"
    assert h["occurred_at"].endswith("Z")


def test_payload_is_compact_json_and_decodes_back() -> None:
    m = Message.from_data("t", "a", "k", {"b": [1, 2], "s": "é"})
    assert m.payload == '{"b":[1,2],"s":"é"}'.encode()
    assert m.data() == {"b": [1, 2], "s": "é"}


def test_rfc3339_treats_naive_as_utc() -> None:
    assert rfc3339(datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05Z"
    assert rfc3339(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05Z"
