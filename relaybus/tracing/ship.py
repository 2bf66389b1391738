"""``python -m relaybus.tracing.ship SERVICE``: a traced process's span shipper.

Reads batches of lean span records (``relaybus.tracing.lean``) from its parent on
stdin — length-prefixed pickles, the parent's own pipe — and exports them with the
OpenTelemetry SDK's OTLP/HTTP exporter (endpoint from ``OTEL_EXPORTER_OTLP_*``), so
their encoding and sending cost the parent nothing. Exits when its stdin closes.
"""

from __future__ import annotations

import sys

from relaybus.tracing.otel import ship_main

if __name__ == "__main__":
    raise SystemExit(ship_main(sys.argv[1:], sys.stdin.buffer))
