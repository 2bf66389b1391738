"""An OTLP/HTTP receiver that accepts every export and keeps nothing: where the tracing
benchmark's spans go, so that what is measured is the traced process's own cost
(creating, batching, encoding and sending spans), not a backend's sharing its cores.

    .venv/bin/python -m bench.otlp_sink PORT
"""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Sink(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        self.send_response(200)
        # An empty ExportTraceServiceResponse: every span accepted.
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per export would be most of the run's output


def main() -> None:
    port = int(sys.argv[1])
    ThreadingHTTPServer(("127.0.0.1", port), Sink).serve_forever()


if __name__ == "__main__":
    main()
