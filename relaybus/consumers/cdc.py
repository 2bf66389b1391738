"""Debezium's outbox records, read as relaybus's own (docs/cdc.md).

Debezium's Outbox Event Router (as ``relaybus stack up --debezium`` configures it)
writes the same key, body and ``id``/``type``/``aggregate*`` headers as the relay,
but: ``occurred_at`` as epoch microseconds, no ``content-type`` nor
``schema_version``, the outbox row's ``headers`` column as one JSON header
(``relaybus-outbox-headers``), and four ``__debezium.context.*`` headers. ``normalize``
turns that into exactly the headers the relay would have sent, so a handler cannot
tell the two sources apart. The headers are untrusted like any others: the packed
JSON may only add headers the writer could have set, never the envelope nor
relaybus's reserved names.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timedelta

from relaybus import headers as rh
from relaybus.message import CONTENT_TYPE, SCHEMA_VERSION, rfc3339

PACKED_HEADERS = "relaybus-outbox-headers"
DEBEZIUM_PREFIX = "__debezium."
_UNIX_EPOCH = datetime(1970, 1, 1)
# Epoch microseconds up to the last instant ``datetime`` holds (year 9999): a larger
# number is not a time Debezium wrote, and the record is refused.
_MAX_MICROS = (datetime.max - _UNIX_EPOCH) // timedelta(microseconds=1)


def is_debezium(headers: Mapping[str, str]) -> bool:
    """True when the record carries Debezium's outbox headers (cheap: two lookups)."""
    return PACKED_HEADERS in headers or "__debezium.context.connectorName" in headers


def normalize(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers the relay would have written for this Debezium record.

    Raises ``ValueError`` if the packed headers are not a JSON object of strings, or
    ``occurred_at`` is a number of epoch microseconds past year 9999
    (``incoming.decode`` dead-letters the record as ``bad-header``).
    """
    out = {k: v for k, v in headers.items() if not k.startswith(DEBEZIUM_PREFIX)}
    packed = out.pop(PACKED_HEADERS, None)
    if packed:
        for name, value in _unpack(packed).items():
            if name in rh.ENVELOPE and name != "schema_version":
                continue  # the envelope comes from the row's own columns
            if rh.is_reserved(name) or name in out:
                continue
            out[name] = value
    occurred = out.get("occurred_at", "")
    # isascii: ``isdigit`` also accepts other scripts' digits, which int() may refuse.
    if occurred.isascii() and occurred.isdigit():
        micros = int(occurred) if len(occurred) <= 19 else _MAX_MICROS + 1
        if micros > _MAX_MICROS:
            raise ValueError(f"occurred_at {occurred[:40]!r} is past year 9999 in epoch µs")
        out["occurred_at"] = rfc3339(_UNIX_EPOCH + timedelta(microseconds=micros))
    out.setdefault("content-type", CONTENT_TYPE)
    out.setdefault("schema_version", SCHEMA_VERSION)
    return out


def _unpack(packed: str) -> dict[str, str]:
    try:
        value = json.loads(packed)
    except (ValueError, RecursionError):
        raise ValueError(f"{PACKED_HEADERS} is not JSON") from None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError(f"{PACKED_HEADERS} must map strings to strings")
    return value
