"""Decoding of PostgreSQL's ``pgoutput`` logical replication messages (protocol 1).

Only what the WAL relay needs: transaction boundaries (``Begin``/``Commit``), the
table descriptions (``Relation``) and inserted rows (``Insert``) in text format.
Every other message kind (update, delete, truncate, type, origin, logical message)
is returned as ``Skipped`` so the caller can still confirm its LSN. A message that is
cut short or malformed raises ``PgoutputError`` naming what is wrong; nothing here
trusts a length field beyond the bytes actually received.

Format: https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

# pgoutput timestamps count microseconds from 2000-01-01 UTC.
PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)

_U8 = struct.Struct("!B")
_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_I64 = struct.Struct("!q")
_U64 = struct.Struct("!Q")


class PgoutputError(ValueError):
    """A message that is not valid pgoutput protocol 1 (the reason says where)."""


@dataclass(frozen=True)
class Begin:
    """A transaction starts; ``final_lsn`` is its commit record's LSN."""

    final_lsn: int
    commit_time: datetime
    xid: int


@dataclass(frozen=True)
class Commit:
    """A transaction ends. Confirming ``end_lsn`` tells the server that the whole
    transaction (and all before it) need not be sent again."""

    commit_lsn: int
    end_lsn: int
    commit_time: datetime


@dataclass(frozen=True)
class Relation:
    """A table's description, sent before its first change in a session (and again
    after it changes): the column names, in the order tuples carry them."""

    relid: int
    namespace: str
    name: str
    columns: tuple[str, ...]


@dataclass(frozen=True)
class Insert:
    """A row inserted into table ``relid``: each column's text value (None for NULL)."""

    relid: int
    values: tuple[str | None, ...]


@dataclass(frozen=True)
class Skipped:
    """A message the relay does not act on (its kind byte, as a character)."""

    kind: str


Decoded = Begin | Commit | Relation | Insert | Skipped


class _Reader:
    """Bounds-checked reads from one message."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise PgoutputError(f"message ends inside {what} (needs {n} bytes at {self.pos})")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def unpack(self, fmt: struct.Struct, what: str) -> int:
        value: int = fmt.unpack(self.take(fmt.size, what))[0]
        return value

    def cstring(self, what: str) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise PgoutputError(f"{what} is not NUL-terminated")
        raw = self.data[self.pos : end]
        self.pos = end + 1
        return _text(raw, what)


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError as err:
        raise PgoutputError(f"{what} is not UTF-8: {err}") from err


def _timestamp(micros: int) -> datetime:
    return PG_EPOCH + timedelta(microseconds=micros)


def decode(data: bytes) -> Decoded:
    """One pgoutput message (a replication message's payload), decoded.

    Raises ``PgoutputError`` on an empty, truncated or malformed message.
    """
    if not data:
        raise PgoutputError("empty message")
    kind = chr(data[0])
    r = _Reader(data)
    r.pos = 1
    if kind == "B":
        final_lsn = r.unpack(_U64, "Begin.final_lsn")
        ts = r.unpack(_I64, "Begin.commit_time")
        xid = r.unpack(_U32, "Begin.xid")
        return Begin(final_lsn, _timestamp(ts), xid)
    if kind == "C":
        r.unpack(_U8, "Commit.flags")
        commit_lsn = r.unpack(_U64, "Commit.commit_lsn")
        end_lsn = r.unpack(_U64, "Commit.end_lsn")
        ts = r.unpack(_I64, "Commit.commit_time")
        return Commit(commit_lsn, end_lsn, _timestamp(ts))
    if kind == "R":
        relid = r.unpack(_U32, "Relation.relid")
        namespace = r.cstring("Relation.namespace")
        name = r.cstring("Relation.name")
        r.unpack(_U8, "Relation.replica_identity")
        count = r.unpack(_I16, "Relation.column_count")
        if count < 0:
            raise PgoutputError(f"Relation.column_count is negative ({count})")
        columns = []
        for i in range(count):
            r.unpack(_U8, f"Relation column {i} flags")
            columns.append(r.cstring(f"Relation column {i} name"))
            r.take(8, f"Relation column {i} type")  # type oid + typmod: text format only
        return Relation(relid, namespace, name, tuple(columns))
    if kind == "I":
        relid = r.unpack(_U32, "Insert.relid")
        marker = r.take(1, "Insert tuple marker")
        if marker != b"N":
            raise PgoutputError(f"Insert tuple marker is {marker!r}, expected b'N'")
        return Insert(relid, _tuple(r))
    return Skipped(kind)


def _tuple(r: _Reader) -> tuple[str | None, ...]:
    """TupleData from ``r``'s position. The relay's hottest loop (a call per column
    would cost more than the rest of the row's handling): reads the bytes in place,
    bounds-checked, without a method call per column."""
    data, pos, end = r.data, r.pos, len(r.data)
    if pos + 2 > end:
        raise PgoutputError("message ends inside TupleData.column_count")
    count = _I16.unpack_from(data, pos)[0]
    if count < 0:
        raise PgoutputError(f"TupleData.column_count is negative ({count})")
    pos += 2
    values: list[str | None] = []
    append = values.append
    unpack_size = _I32.unpack_from
    try:
        for i in range(count):
            if pos >= end:
                raise PgoutputError(f"message ends before column {i}")
            kind = data[pos]
            if kind == 0x74:  # 't': text
                if pos + 5 > end:
                    raise PgoutputError(f"message ends inside column {i} length")
                size = unpack_size(data, pos + 1)[0]
                start, pos = pos + 5, pos + 5 + size
                if size < 0 or pos > end:
                    raise PgoutputError(f"column {i} length {size} runs past the message")
                append(data[start:pos].decode())
            elif kind == 0x6E:  # 'n': NULL
                append(None)
                pos += 1
            elif kind == 0x75:  # 'u': unchanged TOAST, in updates only
                raise PgoutputError(f"column {i} is an unchanged TOAST value in an insert")
            else:
                raise PgoutputError(
                    f"column {i} has kind {bytes([kind])!r} (binary mode is not asked for)"
                )
    except UnicodeDecodeError as err:
        raise PgoutputError(f"a column value is not UTF-8: {err}") from err
    r.pos = pos
    return tuple(values)


def lsn_text(lsn: int) -> str:
    """An LSN as PostgreSQL prints it (``16/B374D848``)."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    """``16/B374D848`` as an integer; ``ValueError`` if it is not an LSN."""
    high, sep, low = text.partition("/")
    if not sep:
        raise ValueError(f"not an LSN: {text!r}")
    return (int(high, 16) << 32) | int(low, 16)
