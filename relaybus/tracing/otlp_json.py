"""Lean spans (``relaybus.tracing.lean``) sent as OTLP/HTTP JSON.

OTLP/HTTP carries the same request as protobuf or as JSON (``application/json``; ids
as hex strings, enums as integers, 64-bit integers as decimal strings), and receivers
accept both. Encoding a batch of span tuples with ``json.dumps`` costs a few
microseconds a span, where the SDK's path (a ``ReadableSpan`` each, then
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
import json
import logging
import zlib
from collections.abc import Mapping
from typing import Any

import requests
from opentelemetry.util.re import parse_env_headers

from relaybus.tracing.api import Value
from relaybus.tracing.lean import Record

log = logging.getLogger("relaybus.tracing")

# OTLP's SpanKind values.
KINDS = {"internal": 1, "server": 2, "client": 3, "producer": 4, "consumer": 5}
STATUS_ERROR = 2


def _value(value: Value) -> dict[str, Any]:
    if isinstance(value, bool):  # before int: a bool is an int
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    return {"stringValue": str(value)}


def _attributes(attributes: Mapping[str, Value]) -> list[dict[str, Any]]:
    return [{"key": k, "value": _value(v)} for k, v in attributes.items()]


def encode(records: list[Record], service_name: str) -> bytes:
    """One ``ExportTraceServiceRequest`` in OTLP's JSON form."""
    spans = []
    for name, kind, trace_id, span_id, parent, start, end, attrs, error, events, links in records:
        span: dict[str, Any] = {
            "traceId": f"{trace_id:032x}",
            "spanId": f"{span_id:016x}",
            "parentSpanId": f"{parent:016x}",
            "name": name,
            "kind": KINDS.get(kind, 1),
            "startTimeUnixNano": str(start),
            "endTimeUnixNano": str(end),
            "attributes": _attributes(attrs),
        }
        if events:
            span["events"] = [
                {"timeUnixNano": str(at), "name": n, "attributes": _attributes(a)}
                for n, at, a in events
            ]
        if links:
            span["links"] = [
                {"traceId": f"{t:032x}", "spanId": f"{i:016x}", "attributes": _attributes(a)}
                for t, i, a in links
            ]
        if error is not None:
            span["status"] = {"code": STATUS_ERROR, "message": error}
        spans.append(span)
    request = {
        "resourceSpans": [
            {
                "resource": {"attributes": _attributes({"service.name": service_name})},
                "scopeSpans": [{"scope": {"name": "relaybus"}, "spans": spans}],
            }
        ]
    }
    return json.dumps(request, separators=(",", ":")).encode()


def _setting(environ: Mapping[str, str], name: str) -> str | None:
    """``OTEL_EXPORTER_OTLP_TRACES_<name>``, else ``OTEL_EXPORTER_OTLP_<name>``."""
    for key in (f"OTEL_EXPORTER_OTLP_TRACES_{name}", f"OTEL_EXPORTER_OTLP_{name}"):
        if value := environ.get(key, "").strip():
            return value
    return None


class OtlpJsonSender:
    """Posts batches of lean span records to an OTLP/HTTP traces endpoint (the
    ``deliver`` of a ``LeanRecorder``, on its thread). Raises ``ValueError`` for a
    timeout or compression it cannot follow."""

    def __init__(self, url: str, service_name: str, environ: Mapping[str, str]) -> None:
        self.url = url
        self.service_name = service_name
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

    def deliver(self, records: list[Record]) -> None:
        body = encode(records, self.service_name)
        if self.compression == "gzip":
            body = gzip.compress(body)
        elif self.compression == "deflate":
            body = zlib.compress(body)
        try:
            answer = self.session.post(self.url, data=body, timeout=self.timeout)
        except requests.RequestException as err:
            # Not the error's text: it quotes the URL, which may carry credentials.
            log.warning("tracing: %d spans dropped, the OTLP receiver did not answer: %s",
                        len(records), type(err).__name__)  # fmt: skip
            return
        if answer.status_code >= 300:
            log.warning("tracing: %d spans dropped, the OTLP receiver answered %d",
                        len(records), answer.status_code)  # fmt: skip

    def close(self) -> None:
        self.session.close()
