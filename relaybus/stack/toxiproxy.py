"""Toxiproxy (Shopify's TCP proxy for network faults), built with ``go install`` and run
on loopback with three proxies the fault matrix's S6 drives over its HTTP API:

- ``kafka``: ``kafka_proxied_port`` -> the broker's PROXIED listener. The broker
  advertises that listener as the proxy's port, so a client bootstrapped through the
  proxy also sends every later request (metadata, produce) through it;
- ``postgres``: ``postgres_proxied_port`` -> PostgreSQL;
- ``rabbitmq``: ``rabbitmq_proxied_port`` -> RabbitMQ's AMQP port.

Nothing goes through a proxy unless a process is configured with its port.
"""

from __future__ import annotations

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

MODULE = "github.com/Shopify/toxiproxy/v2/cmd/server"


class Toxiproxy:
    """The ``toxiproxy`` server (API on ``toxiproxy_port``) with the stack's proxies."""

    name = "toxiproxy"

    def __init__(self, settings: StackSettings) -> None:
        self.s = settings
        self.home = settings.data_dir / "toxiproxy"
        self.pid_file = self.home / "pid"
        self.log = self.home / "toxiproxy.log"

    @property
    def api(self) -> str:
        return f"http://{self.s.host}:{self.s.toxiproxy_port}"

    def proxies(self) -> list[dict[str, object]]:
        """The proxies the stack keeps (name, listen, upstream)."""
        h = self.s.host
        return [
            {
                "name": "kafka",
                "listen": f"{h}:{self.s.kafka_proxied_port}",
                "upstream": f"{h}:{self.s.kafka_proxied_upstream_port}",
                "enabled": True,
            },
            {
                "name": "postgres",
                "listen": f"{h}:{self.s.postgres_proxied_port}",
                "upstream": f"{h}:{self.s.postgres_port}",
                "enabled": True,
            },
            {
                "name": "rabbitmq",
                "listen": f"{h}:{self.s.rabbitmq_proxied_port}",
                "upstream": f"{h}:{self.s.rabbitmq_port}",
                "enabled": True,
            },
        ]

    def buildable(self) -> bool:
        """Built already, or a ``go`` to build it with."""
        return self._built().exists() or shutil.which("go") is not None

    def _built(self) -> Path:
        return self.s.cache_dir / f"toxiproxy-{self.s.toxiproxy_version}" / "server"

    def binary(self) -> Path:
        """The server binary, built once into the cache with ``go install``."""
        binary = self._built()
        folder = binary.parent
        if binary.exists():
            return binary
        go = shutil.which("go")
        if go is None:
            raise StackError("toxiproxy: no `go` on PATH to build it (Go 1.22+)")
        folder.mkdir(parents=True, exist_ok=True)
        run(
            [go, "install", f"{MODULE}@{self.s.toxiproxy_version}"],
            "toxiproxy: go install",
            env={"GOBIN": str(folder), "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"},
        )
        return binary

    def start(self) -> None:
        if read_pid(self.pid_file) is None:
            binary = self.binary()
            private_dir(self.home)
            require_free_port(self.s.host, self.s.toxiproxy_port, self.name)
            spawn(
                [str(binary), "-host", self.s.host, "-port", str(self.s.toxiproxy_port)],
                self.log,
                self.pid_file,
            )
            wait_until(
                lambda: port_open(self.s.host, self.s.toxiproxy_port),
                30,
                self.name,
                self.log,
            )
        self._populate()

    def _populate(self) -> None:
        """Create the proxies that are missing (``/populate`` leaves existing ones)."""
        body = json.dumps(self.proxies()).encode()
        request = urllib.request.Request(f"{self.api}/populate", data=body, method="POST")
        request.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10):
                return
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")[:500]
            raise StackError(f"toxiproxy: populate refused ({err.code})", detail) from None
        except OSError as err:
            raise StackError(f"toxiproxy: API unreachable: {err}") from None

    def stop(self) -> bool:
        return stop_pid(self.pid_file)

    def status(self) -> list[ServiceStatus]:
        pid = read_pid(self.pid_file)
        listens = ", ".join(f"{p['name']} {p['listen']}" for p in self.proxies())
        return [ServiceStatus(self.name, pid is not None, self.api, pid, listens)]
