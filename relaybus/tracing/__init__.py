"""Tracing for every relaybus process: OpenTelemetry spans, off unless configured.

Configured the way every OpenTelemetry user expects, by the standard variables:
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, or
``OTEL_TRACES_EXPORTER=otlp``) turns it on; ``OTEL_SDK_DISABLED=true`` or
``OTEL_TRACES_EXPORTER=none`` keeps it off; ``OTEL_SERVICE_NAME`` names the process
(else the composition root's default); ``OTEL_TRACES_SAMPLER``/``_ARG`` and
``OTEL_BSP_*`` are the SDK's. With none of them set nothing of OpenTelemetry is
imported and ``tracer()`` is a ``NoTracer``.

Why a process-wide tracer rather than one passed to every constructor: it is what
OpenTelemetry itself is (one ``TracerProvider`` per process, found by instrumented
code), and the spans of one message cross every layer. It is set once, by the
composition root (``relaybus.cli.main``), never at import.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from relaybus.tracing.api import NULL_SPAN, Carrier, Kind, NoTracer, Span, Tracer, Value
from relaybus.tracing.w3c import TraceContext, clean_tracestate, parse_traceparent, read_context

__all__ = [
    "NULL_SPAN",
    "Carrier",
    "Kind",
    "NoTracer",
    "Span",
    "TraceContext",
    "Tracer",
    "Value",
    "clean_tracestate",
    "configure",
    "install",
    "parse_traceparent",
    "read_context",
    "tracer",
    "wanted",
]

log = logging.getLogger(__name__)

_OFF = NoTracer()
_installed: list[Tracer] = []


def tracer() -> Tracer:
    """The process's tracer (a ``NoTracer`` unless ``configure``/``install`` set one)."""
    return _installed[-1] if _installed else _OFF


def install(chosen: Tracer | None) -> None:
    """Make ``chosen`` the process's tracer (None: back to off). Composition roots and
    tests only."""
    _installed.clear()
    if chosen is not None:
        _installed.append(chosen)


def wanted(environ: Mapping[str, str]) -> str | None:
    """Why ``environ`` asks for tracing (the variable that does), or None when it does
    not; raises ``ValueError`` naming the variable when it asks for something relaybus
    cannot do (another exporter, OTLP over gRPC, an endpoint that is no URL)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return None
    if exporter not in ("", "otlp"):
        raise ValueError(f"OTEL_TRACES_EXPORTER={exporter!r}: relaybus exports OTLP only")
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        endpoint = environ.get(name, "").strip()
        if endpoint:
            if not endpoint.startswith(("http://", "https://")):
                raise ValueError(f"{name} must be an http:// or https:// URL")
            break
    else:
        if exporter != "otlp":
            return None
        name = "OTEL_TRACES_EXPORTER"
    if protocol.strip() != "http/protobuf":
        raise ValueError(
            f"OTLP protocol {protocol!r}: relaybus exports http/protobuf "
            "(the OTLP default; a collector or Jaeger takes it on port 4318)"
        )
    return name


def configure(default_service: str, environ: Mapping[str, str] | None = None) -> Tracer:
    """Install the tracer the environment asks for and return it: an OpenTelemetry one
    when tracing is wanted (service name ``OTEL_SERVICE_NAME`` or ``default_service``),
    else a ``NoTracer``. A configuration relaybus cannot follow, or tracing wanted
    without the ``[tracing]`` extra, is logged and leaves tracing off: a process is not
    refused its work for want of its traces."""
    env = os.environ if environ is None else environ
    try:
        reason = wanted(env)
    except ValueError as err:
        log.warning("tracing stays off: %s", err)
        reason = None
    if reason is None:
        install(None)
        return _OFF
    try:
        from relaybus.tracing import otel
    except ImportError as err:
        log.warning(
            "tracing stays off: %s is set but OpenTelemetry is not installed (%s); "
            "install relaybus[tracing]",
            reason,
            err.name,
        )
        install(None)
        return _OFF
    try:
        chosen = otel.build(env.get("OTEL_SERVICE_NAME") or default_service, env)
    except ValueError as err:
        log.warning("tracing stays off: %s", err)
        install(None)
        return _OFF
    install(chosen)
    return chosen
