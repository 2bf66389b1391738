"""Debezium's outbox records read as the relay's (consumers.cdc), and pgoutput decoding
(outbox.pgoutput) of hand-built and damaged messages."""

from __future__ import annotations

import json
import struct
import uuid
from datetime import datetime

import pytest

from relaybus.consumers.cdc import PACKED_HEADERS, normalize
from relaybus.consumers.incoming import InvalidMessage, decode
from relaybus.message import Message
from relaybus.outbox.pgoutput import (
    Begin,
    Commit,
    Insert,
    PgoutputError,
    Relation,
    Skipped,
    lsn_text,
    parse_lsn,
)
from relaybus.outbox.pgoutput import decode as decode_pgoutput
from relaybus.outbox.wal_rows import OutboxWalDecoder, WalBadRow, WalCommit, WalEvent
from relaybus.outbox.wal_stream import WalMessage

MESSAGE_ID = uuid.UUID("01a2370b-aa6a-7469-975a-883d9d84e61b")


def _debezium_headers(**extra: str) -> dict[str, str]:
    return {
        "__debezium.context.connectorLogicalName": "relaybus",
        "__debezium.context.taskId": "0",
        "__debezium.context.connectorName": "postgresql",
        "__debezium.context.runId": "01a2370b-8f78-7944-8a88-faa93e6e72a3",
        "id": str(MESSAGE_ID),
        "type": "probe.created",
        "aggregatetype": "probe",
        "aggregateid": "k1",
        "occurred_at": "1796219841149634",
        **extra,
    }


def test_debezium_headers_become_exactly_the_relays() -> None:
    ts = datetime(2026, 12, 2, 13, 57, 21, 149634)  # that instant, as the relay reads it
    relay = Message(
        type="probe.created",
        aggregatetype="probe",
        aggregateid="k1",
        payload=b"{}",
        id=MESSAGE_ID,
        occurred_at=ts,
        traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01",
        extra_headers={"tenant": "<b>t1</b>"},
    ).headers()
    packed = json.dumps({"tenant": "<b>t1</b>", "traceparent": relay["traceparent"]})
    assert normalize(_debezium_headers(**{PACKED_HEADERS: packed})) == relay


def test_packed_headers_never_override_the_envelope_nor_add_reserved_names() -> None:
    packed = json.dumps(
        {"id": str(uuid.uuid4()), "type": "admin.grant", "x-dlq-reason": "forged", "ok": "1"}
    )
    out = normalize(_debezium_headers(**{PACKED_HEADERS: packed}))
    assert out["id"] == str(MESSAGE_ID)
    assert out["type"] == "probe.created"
    assert "x-dlq-reason" not in out
    assert out["ok"] == "1"


@pytest.mark.parametrize("packed", ["{", "[1, 2]", '{"a": 1}', '{"a": {"b": "c"}}', "[" * 100_000])
def test_malformed_packed_headers_are_dead_lettered_as_bad_header(packed: str) -> None:
    with pytest.raises(InvalidMessage) as err:
        decode(b"{}", _debezium_headers(**{PACKED_HEADERS: packed}), key="k1", source="t")
    assert err.value.reason == "bad-header"


def test_an_occurred_at_that_is_not_epoch_micros_is_left_as_sent() -> None:
    # (All digits but past year 9999 is refused: tests/unit/test_record_faults.py.)
    for odd in ("2026-12-02T14:37:21Z", "-5", "", "٣"):
        assert normalize(_debezium_headers(occurred_at=odd))["occurred_at"] == odd


def test_relay_records_pass_through_decode_untouched() -> None:
    headers = Message(type="t.c", aggregatetype="a", aggregateid="k", payload=b"{}").headers()
    incoming = decode(b"{}", headers, key="k", source="t")
    assert incoming.headers == headers


# -- pgoutput ---------------------------------------------------------------------------
def _relation(relid: int, columns: list[str], name: bytes = b"outbox") -> bytes:
    body = struct.pack("!I", relid) + b"public\x00" + name + b"\x00" + b"d"
    body += struct.pack("!h", len(columns))
    for col in columns:
        body += b"\x00" + col.encode() + b"\x00" + struct.pack("!Ii", 25, -1)
    return b"R" + body


def _insert(relid: int, values: list[str | None]) -> bytes:
    body = b"I" + struct.pack("!I", relid) + b"N" + struct.pack("!h", len(values))
    for v in values:
        if v is None:
            body += b"n"
        else:
            raw = v.encode()
            body += b"t" + struct.pack("!i", len(raw)) + raw
    return body


COLUMNS = [
    "id",
    "aggregatetype",
    "aggregateid",
    "type",
    "payload",
    "timestamp",
    "headers",
    "partition",
    "sequence",
    "status",
]
ROW = [
    str(MESSAGE_ID),
    "probe",
    "k1",
    "probe.created",
    '{"a": [1, "x"]}',
    "2026-12-02 14:37:21.149634",
    '{"traceparent": "00-x"}',
    "3",
    "42",
    "pending",
]


def test_pgoutput_messages_decode() -> None:
    begin = b"B" + struct.pack("!QqI", 0x16B374D848, 1_000_000, 7)
    commit = b"C" + struct.pack("!BQQq", 0, 0x10, 0x20, 2_000_000)
    assert decode_pgoutput(begin) == Begin(0x16B374D848, decode_pgoutput(begin).commit_time, 7)  # type: ignore[union-attr]
    assert isinstance(decode_pgoutput(commit), Commit)
    assert decode_pgoutput(commit).end_lsn == 0x20  # type: ignore[union-attr]
    assert decode_pgoutput(_relation(5, COLUMNS)) == Relation(5, "public", "outbox", tuple(COLUMNS))
    assert decode_pgoutput(_insert(5, [None, "x"])) == Insert(5, (None, "x"))
    assert decode_pgoutput(b"Dxxxx") == Skipped("D")
    assert lsn_text(0x16B374D848) == "16/B374D848"
    assert parse_lsn("16/B374D848") == 0x16B374D848


@pytest.mark.parametrize(
    "damaged",
    [
        b"",
        b"B\x00\x01",
        b"C" + b"\x00" * 10,
        _relation(5, COLUMNS)[:-3],
        b"R\x00\x00\x00\x05public",  # no NUL terminator
        _insert(5, ["abc"])[:-1],
        b"I\x00\x00\x00\x05X\x00\x01",  # bad tuple marker
        b"I\x00\x00\x00\x05N\x00\x01u",  # unchanged TOAST in an insert
        b"I\x00\x00\x00\x05N\x00\x01b\x00\x00\x00\x01x",  # binary column
        b"I\x00\x00\x00\x05N\x00\x01t\x7f\xff\xff\xff",  # length beyond the message
        b"I\x00\x00\x00\x05N\xff\xff",  # negative column count
        b"I\x00\x00\x00\x05N\x00\x01t\x00\x00\x00\x02\xff\xfe",  # not UTF-8
    ],
)
def test_damaged_pgoutput_is_refused_with_a_reason(damaged: bytes) -> None:
    with pytest.raises(PgoutputError):
        decode_pgoutput(damaged)


def test_the_wal_decoder_turns_outbox_inserts_into_the_relays_messages() -> None:
    decoder = OutboxWalDecoder()
    assert decoder.feed(WalMessage(1, _relation(5, COLUMNS))) is None
    assert decoder.feed(WalMessage(2, _relation(6, COLUMNS, name=b"orders"))) is None
    item = decoder.feed(WalMessage(3, _insert(5, ROW)))
    assert isinstance(item, WalEvent)
    assert item.message.id == MESSAGE_ID
    assert item.message.payload == b'{"a": [1, "x"]}'
    assert item.message.traceparent == "00-x"
    assert item.message.occurred_at == datetime(2026, 12, 2, 14, 37, 21, 149634)
    assert decoder.feed(WalMessage(4, _insert(6, ROW))) is None  # another table
    failed = [*ROW[:-1], "failed"]
    assert decoder.feed(WalMessage(5, _insert(5, failed))) is None  # a relay's failed row
    commit = decoder.feed(WalMessage(6, b"C" + struct.pack("!BQQq", 0, 0x10, 0x20, 0)))
    assert commit == WalCommit(0x20, commit.commit_time)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("type", "x" * 300, "type"),
        ("aggregatetype", "bad/topic", "Kafka topic"),
        ("headers", '{"x-dlq-reason": "forged"}', "reserved"),
        ("headers", '["not", "an", "object"]', "JSON object"),
        ("headers", '{"a": 1}', "strings"),
        ("payload", None, "payload missing"),
        ("timestamp", "not a time", "Invalid isoformat"),
    ],
)
def test_an_outbox_insert_that_cannot_be_published_is_a_bad_row_with_its_id(
    column: str, value: str | None, reason: str
) -> None:
    decoder = OutboxWalDecoder()
    decoder.feed(WalMessage(1, _relation(5, COLUMNS)))
    row = list(ROW)
    row[COLUMNS.index(column)] = value
    item = decoder.feed(WalMessage(2, _insert(5, row)))
    assert isinstance(item, WalBadRow)
    assert reason in item.error
    assert item.columns["id"] == str(MESSAGE_ID)  # kept as a failed row, not lost


def test_an_insert_before_its_relation_or_undecodable_is_a_bad_row() -> None:
    decoder = OutboxWalDecoder()
    assert isinstance(decoder.feed(WalMessage(1, _insert(5, ROW))), WalBadRow)
    assert isinstance(decoder.feed(WalMessage(2, b"I\x00")), WalBadRow)
