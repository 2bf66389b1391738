"""Lean spans (``relaybus.tracing.lean``) sent as OTLP/HTTP JSON.

OTLP/HTTP carries the same request as protobuf or as JSON (``application/json``; ids
as hex strings, enums as integers, 64-bit integers as decimal strings), and receivers
accept both. Writing a span tuple as JSON text costs about 5 µs (done as the span
ends, so the buffer holds strings: ``LeanRecorder``),
where the SDK's path (a ``ReadableSpan`` each, then
``encode_spans`` into protobuf objects) costs over a hundred on the relay's machine
(docs/tracing.md, "Sampling, and what it costs"): that difference is what a 10 %
sample ratio costs the relay.

The destination is the SDK exporter's, from the same standard variables:
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``, ``…_HEADERS``,
``…_TIMEOUT`` (seconds, as the Python SDK reads it), ``…_COMPRESSION`` (``gzip``,
``deflate`` or none) and ``…_CERTIFICATE`` / ``…_CLIENT_CERTIFICATE`` /
``…_CLIENT_KEY``. Delivery is at most once: a batch the receiver refuses or that
cannot be sent is logged and dropped (the SDK's exporter retries; a tracer must never
hold the relay back).
"""

from __future__ import annotations

import gzip
import logging
import math
import zlib
from collections.abc import Mapping
from json.encoder import encode_basestring_ascii

import requests
from opentelemetry.util.re import parse_env_headers

from relaybus.tracing.api import Value
from relaybus.tracing.lean import Record

log = logging.getLogger("relaybus.tracing")

# OTLP's SpanKind values.
KINDS = {"internal": 1, "server": 2, "client": 3, "producer": 4, "consumer": 5}
STATUS_ERROR = 2


_quote = encode_basestring_ascii  # a str as a JSON string, in C
_INT64 = (-(2**63), 2**63 - 1)
# Encoded attributes by (key, type, value): most repeat span after span (a handler's
# name, a topic, an outcome), and joining cached fragments costs a tenth of building
# and dumping their dicts. Bounded: cleared when full (unique values, such as message
# ids, come and go).
_FRAGMENTS_MAX = 4096


def _value(value: Value) -> str:
    """An ``AnyValue`` as JSON (proto3's JSON mapping: 64-bit integers as strings,
    non-finite doubles as their names)."""
    if isinstance(value, bool):  # before int: a bool is an int
        return '{"boolValue":true}' if value else '{"boolValue":false}'
    if isinstance(value, int):
        if _INT64[0] <= value <= _INT64[1]:
            return f'{{"intValue":"{value}"}}'
        return f'{{"stringValue":"{value}"}}'  # out of int64's range: kept as text
    if isinstance(value, float):
        if math.isfinite(value):
            return f'{{"doubleValue":{value!r}}}'
        named = "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
        return f'{{"doubleValue":"{named}"}}'
    return f'{{"stringValue":{_quote(str(value))}}}'


class _Fragments:
    """``KeyValue`` lists as JSON, with a bounded cache of encoded attributes."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, type, Value], str] = {}

    def attributes(self, attributes: Mapping[str, Value]) -> str:
        cache = self._cache
        parts = []
        for key, value in attributes.items():
            ident = (key, type(value), value)
            fragment = cache.get(ident)
            if fragment is None:
                if len(cache) >= _FRAGMENTS_MAX:
                    cache.clear()
                fragment = f'{{"key":{_quote(key)},"value":{_value(value)}}}'
                cache[ident] = fragment
            parts.append(fragment)
        return ",".join(parts)

    def span(self, record: Record) -> str:
        """One ``Span`` of OTLP's JSON form: what a ``LeanRecorder`` keeps of an ended
        span until it is sent (one string, which the garbage collector never tracks).

        Written as text from cached fragments rather than as dicts for ``json.dumps``:
        it runs for every recorded span, on the traced event loop's thread."""
        name, kind, trace_id, span_id, parent, start, end, attrs, error, events, links = record
        attributes = self.attributes
        extra = ""
        if events:
            extra += ',"events":[' + ",".join(
                f'{{"timeUnixNano":"{at}","name":{_quote(n)},"attributes":[{attributes(a)}]}}'
                for n, at, a in events
            ) + "]"  # fmt: skip
        if links:
            extra += ',"links":[' + ",".join(
                f'{{"traceId":"{t}","spanId":"{i}","attributes":[{attributes(a)}]}}'
                for t, i, a in links
            ) + "]"  # fmt: skip
        if error is not None:
            extra += f',"status":{{"code":{STATUS_ERROR},"message":{_quote(error)}}}'
        return (
            f'{{"traceId":"{trace_id}","spanId":"{span_id}",'
            f'"parentSpanId":"{parent}","name":{_quote(name)},"kind":{KINDS.get(kind, 1)},'
            f'"startTimeUnixNano":"{start}","endTimeUnixNano":"{end}",'
            f'"attributes":[{attributes(attrs)}]{extra}}}'
        )


def request(spans: list[str], service_name: str) -> bytes:
    """One ``ExportTraceServiceRequest`` in OTLP's JSON form around ``spans`` (each
    from ``_Fragments.span``)."""
    service = f'{{"key":"service.name","value":{_value(service_name)}}}'
    return (
        f'{{"resourceSpans":[{{"resource":{{"attributes":[{service}]}},'
        f'"scopeSpans":[{{"scope":{{"name":"relaybus"}},"spans":[{",".join(spans)}]}}]}}]}}'
    ).encode()


def encode(records: list[Record], service_name: str, fragments: _Fragments | None = None) -> bytes:
    """``records`` as one ``ExportTraceServiceRequest`` in OTLP's JSON form."""
    span = (fragments or _Fragments()).span
    return request([span(r) for r in records], service_name)


def _setting(environ: Mapping[str, str], name: str) -> str | None:
    """``OTEL_EXPORTER_OTLP_TRACES_<name>``, else ``OTEL_EXPORTER_OTLP_<name>``."""
    for key in (f"OTEL_EXPORTER_OTLP_TRACES_{name}", f"OTEL_EXPORTER_OTLP_{name}"):
        if value := environ.get(key, "").strip():
            return value
    return None


class OtlpJsonSender:
    """Posts batches of lean spans to an OTLP/HTTP traces endpoint: ``keep`` and
    ``deliver`` of a ``LeanRecorder`` (``keep`` encodes each span as it ends,
    ``deliver`` posts a batch of them on the recorder's thread). Raises ``ValueError``
    for a timeout or compression it cannot follow."""

    def __init__(self, url: str, service_name: str, environ: Mapping[str, str]) -> None:
        self.url = url
        self.service_name = service_name
        self.fragments = _Fragments()
        raw_timeout = _setting(environ, "TIMEOUT") or "10"
        try:
            self.timeout = float(raw_timeout)
        except ValueError:
            raise ValueError(
                f"OTEL_EXPORTER_OTLP_TIMEOUT={raw_timeout[:20]!r} is not a number"
            ) from None
        self.compression = (_setting(environ, "COMPRESSION") or "none").lower()
        if self.compression not in ("none", "gzip", "deflate"):
            raise ValueError(
                f"OTEL_EXPORTER_OTLP_COMPRESSION={self.compression[:20]!r}: "
                "use gzip, deflate or none"
            )
        self.session = requests.Session()
        self.session.headers.update(parse_env_headers(_setting(environ, "HEADERS") or "", True))
        self.session.headers["Content-Type"] = "application/json"
        if self.compression != "none":
            self.session.headers["Content-Encoding"] = self.compression
        if certificate := _setting(environ, "CERTIFICATE"):
            self.session.verify = certificate
        client_cert = _setting(environ, "CLIENT_CERTIFICATE")
        client_key = _setting(environ, "CLIENT_KEY")
        if client_cert and client_key:
            self.session.cert = (client_cert, client_key)

    def keep(self, record: Record) -> str:
        return self.fragments.span(record)

    def deliver(self, spans: list[str]) -> None:
        body = request(spans, self.service_name)
        if self.compression == "gzip":
            body = gzip.compress(body)
        elif self.compression == "deflate":
            body = zlib.compress(body)
        try:
            answer = self.session.post(self.url, data=body, timeout=self.timeout)
        except requests.RequestException as err:
            # Not the error's text: it quotes the URL, which may carry credentials.
            log.warning("tracing: %d spans dropped, the OTLP receiver did not answer: %s",
                        len(spans), type(err).__name__)  # fmt: skip
            return
        if answer.status_code >= 300:
            log.warning("tracing: %d spans dropped, the OTLP receiver answered %d",
                        len(spans), answer.status_code)  # fmt: skip

    def close(self) -> None:
        self.session.close()
