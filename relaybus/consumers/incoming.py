"""What a handler receives, and the decoding of untrusted deliveries into it.

Everything here reads bytes and headers written by anyone with produce rights:
parsing is bounded, and every refusal is an ``InvalidMessage`` with a named reason
(the delivery is dead-lettered with it; the worker goes on).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, ParamSpec, TypeVar

from relaybus import headers as rh
from relaybus.consumers import cdc

log = logging.getLogger(__name__)

_P = ParamSpec("_P")
_R = TypeVar("_R")


class InvalidMessage(ValueError):
    """The message can never be handled (undecodable, unknown type, fails its schema).

    Raised by decoding, or by a handler for a schema failure: the message goes
    straight to the dead-letter queue, without retries. ``reason`` is a short code.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def record_fault(decoder: Callable[_P, _R]) -> Callable[_P, _R]:
    """Make ``decoder`` total: any exception it raises is the record's fault.

    A decoder reads bytes anyone with produce rights wrote, so an error it did not
    foresee (an ``OverflowError`` from a timestamp, a ``TypeError`` from a shape) is
    still about that record, never a reason to retry a batch: it becomes
    ``InvalidMessage("undecodable", …)`` (dead-lettered, the loop goes on) and is
    logged with its traceback once, because it also names a check we are missing.
    """

    @functools.wraps(decoder)
    def total(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return decoder(*args, **kwargs)
        except InvalidMessage:
            raise
        except Exception as err:  # converted into the record's verdict
            log.warning("%s refused a record it did not foresee", decoder.__name__, exc_info=True)
            raise InvalidMessage("undecodable", f"{type(err).__name__}: {str(err)[:200]}") from None

    return total


@dataclass(frozen=True)
class WireLimits:
    """Bounds on what one delivery may carry; anything beyond is dead-lettered.

    ``max_bytes`` caps the body, ``max_headers`` the header count and
    ``max_header_bytes`` the headers' total size (names plus values, in bytes).
    """

    max_bytes: int = 1_048_576
    max_headers: int = 64
    max_header_bytes: int = 65_536

    def __post_init__(self) -> None:
        if min(self.max_bytes, self.max_headers, self.max_header_bytes) < 1:
            raise ValueError("wire limits must be positive")


@dataclass(frozen=True)
class Incoming:
    """One delivery of a message.

    ``raw`` is the exact body bytes (the dead letter carries them unchanged);
    ``payload`` is its decoded JSON. ``headers`` are the business headers only:
    relaybus's reserved ``x-…`` bookkeeping never reaches a handler. ``attempt`` is 1
    on the first delivery and grows through the retry tiers. ``source``,
    ``partition`` and ``offset`` say where the message was *first* consumed (its
    main topic or queue; RabbitMQ has no partition or offset), also on a retry.
    """

    id: uuid.UUID
    type: str
    key: str
    payload: Any
    raw: bytes
    headers: dict[str, str]
    source: str
    partition: int | None = None
    offset: int | None = None
    attempt: int = 1

    def business_headers(self) -> dict[str, str]:
        """A copy of the headers (decoding already left relaybus's bookkeeping out)."""
        return dict(self.headers)


@record_fault
def read_headers(pairs: Iterable[tuple[Any, Any]], limits: WireLimits) -> dict[str, str]:
    """Wire headers as text, bounded. Raises ``InvalidMessage``:

    ``too-many-headers``, ``headers-too-large``, ``bad-header`` (a name or value that
    is not UTF-8 text), ``duplicate-header`` (Kafka allows a name twice; which one
    counts would be a guess). AMQP numbers, booleans and timestamps become text.
    """
    out: dict[str, str] = {}
    size = 0
    for count, (name, value) in enumerate(pairs, start=1):
        if count > limits.max_headers:
            raise InvalidMessage("too-many-headers", f"more than {limits.max_headers} headers")
        # Fast paths for what Kafka clients hand over (ASCII str names, bytes values);
        # the same checks as ``_text``, without building the error text up front.
        if type(name) is str and name.isascii():
            name_text, name_bytes = name, len(name)
        else:
            name_text, name_bytes = _text(name, "header name")
        if type(value) is bytes:
            try:
                value_text, value_bytes = value.decode("utf-8"), len(value)
            except UnicodeDecodeError:
                raise InvalidMessage("bad-header", f"header {name_text!r} is not UTF-8") from None
        else:
            value_text, value_bytes = _text(value, f"header {name_text!r}")
        size += name_bytes + value_bytes
        if size > limits.max_header_bytes:
            raise InvalidMessage(
                "headers-too-large", f"headers exceed {limits.max_header_bytes} bytes"
            )
        if name_text in out:
            raise InvalidMessage("duplicate-header", f"header {name_text!r} appears twice")
        out[name_text] = value_text
    return out


def _text(value: Any, what: str) -> tuple[str, int]:
    """``value`` as text and its size in UTF-8 bytes (each encoded or decoded once)."""
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            return raw.decode("utf-8"), len(raw)
        except UnicodeDecodeError:
            raise InvalidMessage("bad-header", f"{what} is not UTF-8") from None
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool | int | float | Decimal | datetime | date):
        text = str(value)
    elif value is None:
        text = ""
    else:  # AMQP field tables and arrays: text, but never interpreted.
        text = json.dumps(value, default=str, ensure_ascii=False)
    if text.isascii():
        return text, len(text)
    try:
        return text, len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidMessage("bad-header", f"{what} is not valid Unicode") from None


def strict_int(value: str | None, *, low: int, high: int) -> int | None:
    """``value`` as an int within ``[low, high]``, or None (absent, garbage, out of range)."""
    if value is None or not value.isascii() or not value.lstrip("-").isdigit() or len(value) > 20:
        return None
    number = int(value)
    return number if low <= number <= high else None


def retry_due(headers: Mapping[str, str], *, now: float, max_wait: float) -> float:
    """Seconds a retry copy must still wait: its ``x-retry-at`` bounded to
    ``[0, max_wait]``; garbage or non-finite values mean "now"."""
    value = headers.get(rh.RETRY_AT, "")
    try:
        due = float(value) if len(value) <= 32 else math.nan
    except ValueError:
        return 0.0
    if not math.isfinite(due):
        return 0.0
    return min(max(0.0, due - now), max_wait)


def _reject_constant(name: str) -> Any:
    raise InvalidMessage("not-json", f"{name} is not JSON")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise InvalidMessage("huge-number", f"number {text[:40]!r} overflows a double")
    return number


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def _check_text(payload: Any) -> None:
    """Refuse strings PostgreSQL and UTF-8 cannot hold: NUL and lone surrogates.

    Iterative, so a deep payload costs no recursion.
    """
    stack = [payload]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            strings: Iterable[str] = (item,)
        elif isinstance(item, dict):
            strings = item.keys()
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
            continue
        else:
            continue
        for s in strings:
            if "\x00" in s:
                raise InvalidMessage("nul-in-string", "a string contains \\u0000")
            try:
                s.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidMessage(
                    "lone-surrogate", "a string contains an unpaired surrogate"
                ) from None


@record_fault
def parse_payload(raw: bytes, *, require_object: bool = False) -> Any:
    """The body as JSON, bounded; raises ``InvalidMessage``:

    ``not-utf8``, ``not-json`` (incl. truncated, NaN/Infinity), ``too-deep``
    (nesting beyond the parser's stack), ``huge-number`` (an integer over 4 300
    digits or a float that overflows), ``nul-in-string``, ``lone-surrogate``,
    ``not-object`` (when ``require_object``).
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InvalidMessage("not-utf8", str(err)) from None
    try:
        payload = _DECODER.decode(text)
    except RecursionError:
        raise InvalidMessage("too-deep", "JSON nests deeper than the parser allows") from None
    except InvalidMessage:
        raise
    except json.JSONDecodeError as err:
        raise InvalidMessage("not-json", str(err)) from None
    except ValueError as err:  # int() over sys.get_int_max_str_digits
        raise InvalidMessage("huge-number", str(err)[:200]) from None
    if "\\u" in text:  # only escapes can put NUL or a lone surrogate into a string
        _check_text(payload)
    if require_object and not isinstance(payload, dict):
        raise InvalidMessage(
            "not-object", f"body is a JSON {type(payload).__name__}, not an object"
        )
    return payload


@record_fault
def decode(
    raw: bytes,
    headers: Mapping[str, str],
    *,
    key: str,
    source: str,
    partition: int | None = None,
    offset: int | None = None,
    attempt: int = 1,
    accepted_types: Collection[str] | None = None,
    max_bytes: int = 1_048_576,
    require_object: bool = False,
) -> Incoming:
    """Decode one delivery; raises ``InvalidMessage`` with a reason code:

    ``oversize``, ``missing-id``, ``bad-id``, ``missing-type``, ``unknown-type``,
    ``bad-header`` (Debezium's packed headers or time malformed), those of
    ``parse_payload``, and ``undecodable`` for anything unforeseen (``record_fault``).
    A record of Debezium's outbox router gets the headers the relay would have
    written (``relaybus.consumers.cdc.normalize``). ``attempt`` and the
    origin (``source``, ``partition``, ``offset``) are decided by the caller from
    where the delivery came (a main topic: 1 and itself); reserved headers are
    dropped here, unread.
    """
    if len(raw) > max_bytes:
        raise InvalidMessage("oversize", f"{len(raw)} bytes, over the {max_bytes}-byte limit")
    if cdc.is_debezium(headers):
        try:
            headers = cdc.normalize(headers)
        except ValueError as err:
            raise InvalidMessage("bad-header", str(err)) from None
    message_id = headers.get("id")
    if not message_id:
        raise InvalidMessage("missing-id", "no 'id' header")
    try:
        parsed_id = uuid.UUID(message_id) if len(message_id) <= 64 else None
    except ValueError:
        parsed_id = None
    if parsed_id is None:
        raise InvalidMessage("bad-id", f"'id' header {message_id[:64]!r} is not a UUID")
    type_ = headers.get("type")
    if not type_:
        raise InvalidMessage("missing-type", "no 'type' header")
    if accepted_types is not None and type_ not in accepted_types:
        raise InvalidMessage("unknown-type", f"type {type_[:255]!r} is not handled here")
    payload = parse_payload(raw, require_object=require_object)
    return Incoming(
        id=parsed_id,
        type=type_,
        key=key,
        payload=payload,
        raw=raw,
        headers={k: v for k, v in headers.items() if not rh.is_reserved(k)},
        source=source,
        partition=partition,
        offset=offset,
        attempt=attempt,
    )


def header_text(value: Any) -> str:
    """A header value as text for display (invalid UTF-8 shown with replacements)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)
