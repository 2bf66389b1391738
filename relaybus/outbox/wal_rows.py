"""Outbox rows out of the WAL: pgoutput inserts into ``outbox`` as relay messages."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

from relaybus.message import Message
from relaybus.outbox.models import PENDING
from relaybus.outbox.pgoutput import Commit, Insert, PgoutputError, Relation, decode, lsn_text
from relaybus.outbox.store import to_message
from relaybus.outbox.wal_stream import WalMessage

log = logging.getLogger(__name__)

# The columns a WAL row must carry, in the order ``relaybus.outbox.store.to_message`` reads.
MESSAGE_COLUMNS = ("id", "aggregatetype", "aggregateid", "type", "payload", "timestamp", "headers")
RECORD_COLUMNS = (*MESSAGE_COLUMNS, "partition", "sequence")


@dataclass(frozen=True)
class WalEvent:
    """A committed outbox insert to publish, with its stored columns (to record it
    as failed if no broker takes it)."""

    message: Message
    columns: dict[str, str | None]


@dataclass(frozen=True)
class WalBadRow:
    """A committed outbox insert that cannot become a message; ``columns`` are what
    could be read (``id`` among them unless the row is beyond repair)."""

    error: str
    lsn: int
    columns: dict[str, str | None]


@dataclass(frozen=True)
class WalCommit:
    """The end of a transaction: confirming ``end_lsn`` covers everything before."""

    end_lsn: int
    commit_time: datetime


WalItem = WalEvent | WalBadRow | WalCommit


class OutboxWalDecoder:
    """Turns a slot's messages into ``WalItem``s, in WAL (= commit) order.

    Only inserts into ``<schema>.<table>`` with ``status = 'pending'`` become events:
    the relay's own re-inserts of failed rows (status ``failed``) and other tables'
    changes are passed over. A message that is not valid pgoutput, or a row that
    cannot become a message, becomes a ``WalBadRow`` with the reason: it is never
    retried forever nor silently dropped.
    """

    def __init__(self, table: str = "outbox", schema: str = "public") -> None:
        self.table = table
        self.schema = schema
        self._relations: dict[int, Relation] = {}

    def feed(self, raw: WalMessage) -> WalItem | None:
        """The item ``raw`` holds, or None if it holds nothing for the relay."""
        try:
            msg = decode(raw.data)
        except PgoutputError as err:
            at = lsn_text(raw.lsn)
            return WalBadRow(f"undecodable pgoutput message at {at}: {err}", raw.lsn, {})
        if isinstance(msg, Commit):
            return WalCommit(msg.end_lsn, msg.commit_time)
        if isinstance(msg, Relation):
            self._relations[msg.relid] = msg
            return None
        if isinstance(msg, Insert):
            relation = self._relations.get(msg.relid)
            if relation is None:
                return WalBadRow(
                    f"insert into unknown relation {msg.relid} at {lsn_text(raw.lsn)}", raw.lsn, {}
                )
            if relation.namespace != self.schema or relation.name != self.table:
                return None
            return self._row(relation, msg, raw.lsn)
        return None  # Begin, and kinds the publication does not send us

    def _row(self, relation: Relation, msg: Insert, lsn: int) -> WalItem | None:
        if len(msg.values) != len(relation.columns):
            return WalBadRow(
                f"insert at {lsn_text(lsn)} has {len(msg.values)} columns, "
                f"relation {relation.name} has {len(relation.columns)}",
                lsn,
                {},
            )
        columns = dict(zip(relation.columns, msg.values, strict=True))
        if columns.get("status", PENDING) != PENDING:
            return None  # a failed row recorded by a relay: not an event to publish
        missing = [c for c in MESSAGE_COLUMNS if columns.get(c) is None]
        if missing:
            return WalBadRow(f"cannot publish this row: {', '.join(missing)} missing", lsn, columns)
        try:
            row = (
                uuid.UUID(columns["id"]),
                columns["aggregatetype"],
                columns["aggregateid"],
                columns["type"],
                columns["payload"],
                datetime.fromisoformat(columns["timestamp"] or ""),
                columns["headers"],
            )
            return WalEvent(to_message(row), columns)
        except (ValueError, TypeError, AttributeError) as err:
            return WalBadRow(f"cannot publish this row: {err}", lsn, columns)
