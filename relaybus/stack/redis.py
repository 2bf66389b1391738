"""Redis from Debian's packages: the main instance plus independent Redlock instances."""

from __future__ import annotations

import socket
from functools import partial

from relaybus.stack.procs import (
    private_dir,
    read_pid,
    require_free_port,
    spawn,
    stop_pid,
    wait_until,
)
from relaybus.stack.service import ServiceStatus
from relaybus.stack.settings import StackSettings


def redis_ping(host: str, port: int) -> bool:
    """True when a Redis server at ``host:port`` answers PING with PONG."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisInstances:
    """``redis-server`` processes: one on ``redis_port`` and one per ``redlock_ports``.

    The Redlock instances are separate servers (own data, own process) so that the
    Redlock algorithm runs against independent failure domains as it assumes.
    """

    name = "redis"

    def __init__(self, settings: StackSettings) -> None:
        self.s = settings

    def _ports(self) -> list[int]:
        return [self.s.redis_port, *self.s.redlock_ports]

    def start(self) -> None:
        for port in self._ports():
            home = self.s.data_dir / f"redis-{port}"
            private_dir(home)
            pid_file, log = home / "pid", home / "redis.log"
            if read_pid(pid_file) is not None:
                continue
            require_free_port(self.s.host, port, f"redis:{port}")
            spawn(
                [
                    "redis-server",
                    "--bind",
                    self.s.host,
                    "--port",
                    str(port),
                    "--dir",
                    str(home),
                    "--appendonly",
                    "yes",
                    "--save",
                    "",
                    "--daemonize",
                    "no",
                ],
                log,
                pid_file,
            )
        for port in self._ports():
            log = self.s.data_dir / f"redis-{port}" / "redis.log"
            wait_until(partial(redis_ping, self.s.host, port), 30, f"redis:{port}", log)

    def stop(self) -> bool:
        stopped = [stop_pid(self.s.data_dir / f"redis-{p}" / "pid") for p in self._ports()]
        return any(stopped)

    def status(self) -> list[ServiceStatus]:
        out = []
        for i, port in enumerate(self._ports()):
            pid = read_pid(self.s.data_dir / f"redis-{port}" / "pid")
            name = "redis" if i == 0 else f"redis-redlock-{i}"
            out.append(ServiceStatus(name, pid is not None, f"redis://{self.s.host}:{port}/0", pid))
        return out
