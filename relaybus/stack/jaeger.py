"""Jaeger (all-in-one: OTLP receiver, in-memory store, query API and UI), the stack's
trace store for `relaybus stack up --tracing`.

Built from source like Toxiproxy: a throwaway Go module in the cache takes the pinned
release as a tool (``go get -tool github.com/jaegertracing/jaeger/cmd/jaeger@<version>``)
and ``go build`` makes the binary once. It runs with a configuration written here:
the OTLP/HTTP receiver on ``jaeger_otlp_port`` and the query API on
``jaeger_query_port`` (its gRPC side one port below), everything on the stack's
loopback host, no metrics endpoint of its own (parallel stacks would collide on it).
"""

from __future__ import annotations

import fcntl
import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from relaybus.stack.errors import StackError
from relaybus.stack.procs import (
    port_open,
    private_dir,
    read_pid,
    require_free_port,
    run,
    spawn,
    stop_pid,
    wait_until,
)
from relaybus.stack.service import ServiceStatus
from relaybus.stack.settings import StackSettings

MODULE = "github.com/jaegertracing/jaeger"
COMMAND = f"{MODULE}/cmd/jaeger"


def config(settings: StackSettings) -> str:
    """Jaeger's configuration (YAML is a superset of JSON: written as JSON)."""
    host = settings.host
    document = {
        "service": {
            "extensions": ["jaeger_storage", "jaeger_query"],
            "pipelines": {
                "traces": {
                    "receivers": ["otlp"],
                    "processors": ["batch"],
                    "exporters": ["jaeger_storage_exporter"],
                }
            },
            "telemetry": {
                "resource": {"service.name": "jaeger"},
                "metrics": {"level": "none"},
                "logs": {"level": "warn"},
            },
        },
        "extensions": {
            "jaeger_query": {
                "storage": {"traces": "memstore"},
                "http": {"endpoint": f"{host}:{settings.jaeger_query_port}"},
                "grpc": {"endpoint": f"{host}:{settings.jaeger_query_port - 1}"},
            },
            "jaeger_storage": {
                "backends": {"memstore": {"memory": {"max_traces": settings.jaeger_max_traces}}}
            },
        },
        "receivers": {
            "otlp": {"protocols": {"http": {"endpoint": f"{host}:{settings.jaeger_otlp_port}"}}}
        },
        "processors": {"batch": {"timeout": "200ms"}},
        "exporters": {"jaeger_storage_exporter": {"trace_storage": "memstore"}},
    }
    return json.dumps(document, indent=2)


class Jaeger:
    """The ``jaeger`` all-in-one process."""

    name = "jaeger"

    def __init__(self, settings: StackSettings) -> None:
        self.s = settings
        self.home = settings.data_dir / "jaeger"
        self.pid_file = self.home / "pid"
        self.log = self.home / "jaeger.log"

    @property
    def query_url(self) -> str:
        return f"http://{self.s.host}:{self.s.jaeger_query_port}"

    @property
    def otlp_endpoint(self) -> str:
        """What ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set to for this Jaeger."""
        return f"http://{self.s.host}:{self.s.jaeger_otlp_port}"

    def _built(self) -> Path:
        return self.s.cache_dir / f"jaeger-{self.s.jaeger_version}" / "jaeger"

    def binary(self) -> Path:
        """The all-in-one binary, built once into the cache (minutes on first use)."""
        binary = self._built()
        if binary.exists():
            return binary
        go = shutil.which("go")
        if go is None:
            raise StackError("jaeger: no `go` on PATH to build it (Go 1.24+)")
        module = binary.parent
        module.mkdir(parents=True, exist_ok=True)
        # One build at a time per cache (two stacks started side by side share it): the
        # second waits for the first and finds the binary.
        with (module / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not binary.exists():
                self._build(go, module, binary)
        return binary

    def _build(self, go: str, module: Path, binary: Path) -> None:
        env = {"CGO_ENABLED": "0", "GOFLAGS": "-mod=mod"}
        # Niced: a first build takes minutes of CPU the services beside it need more.
        go_command = ["nice", "-n", "19", go] if shutil.which("nice") else [go]
        if not (module / "go.mod").exists():
            run([*go_command, "mod", "init", "relaybus.local/jaeger"], "jaeger: go mod init",
                env, cwd=module)  # fmt: skip
        run([*go_command, "get", "-tool", f"{COMMAND}@{self.s.jaeger_version}"],
            "jaeger: go get", env, cwd=module)  # fmt: skip
        partial = module / "jaeger.partial"
        # Without optimisation (-N -l): a third less CPU to build, and a development
        # trace store's load (one developer's traces, the tests') never needs it.
        build = [*go_command, "build", "-trimpath", "-ldflags=-s -w", "-gcflags=all=-N -l"]
        run([*build, "-o", str(partial), COMMAND], "jaeger: go build", env, cwd=module)
        partial.rename(binary)  # only a complete build counts as built

    def start(self) -> None:
        if read_pid(self.pid_file) is not None:
            return
        binary = self.binary()
        private_dir(self.home)
        for port in (
            self.s.jaeger_otlp_port,
            self.s.jaeger_query_port,
            self.s.jaeger_query_port - 1,
        ):
            require_free_port(self.s.host, port, self.name)
        config_file = self.home / "config.yaml"
        config_file.write_text(config(self.s))
        spawn([str(binary), "--config", str(config_file)], self.log, self.pid_file)
        wait_until(self.ready, 60, self.name, self.log)

    def ready(self) -> bool:
        """Both sides answer: the receiver's port is open and the query API lists."""
        if not port_open(self.s.host, self.s.jaeger_otlp_port):
            return False
        try:
            with urllib.request.urlopen(f"{self.query_url}/api/services", timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> bool:
        return stop_pid(self.pid_file)

    def status(self) -> list[ServiceStatus]:
        pid = read_pid(self.pid_file)
        return [
            ServiceStatus(
                self.name, pid is not None, self.query_url, pid, f"OTLP {self.otlp_endpoint}"
            )
        ]
