"""Real ``relaybus relay`` processes for tests (started, signalled, always cleaned up)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.cli import REPO

FAST = {
    # Short leases so a killed relay's partitions are taken over within seconds.
    "RELAYBUS_RELAY_LEASE_TTL": "3",
    "RELAYBUS_RELAY_POLL_INTERVAL": "0.5",
}


class RelaybusProcess:
    """One ``relaybus`` subprocess (by default ``relay --instance NAME``), logging to
    ``log``; restartable after a kill."""

    def __init__(
        self, name: str, env: dict[str, str], log: Path, argv: list[str] | None = None
    ) -> None:
        self.name, self.env, self.log = name, env, log
        self.argv = argv or ["relay", "--instance", name]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        script = Path(sys.executable).parent / "relaybus"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(script), *self.argv],
                env={**os.environ, **self.env},
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=60)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


class RelayFleet:
    """Starts relays with a shared configuration; stops all of them on exit."""

    def __init__(self, tmp: Path, routes: list[dict[str, Any]], **env: str) -> None:
        self.tmp = tmp
        self.env = {**FAST, "RELAYBUS_ROUTES": json.dumps(routes), **env}
        self.relays: list[RelaybusProcess] = []

    def start(self, name: str) -> RelaybusProcess:
        relay = RelaybusProcess(name, self.env, self.tmp / f"{name}.log")
        relay.start()
        self.relays.append(relay)
        return relay

    def stop_all(self) -> None:
        for relay in self.relays:
            relay.stop()

    def logs(self) -> str:
        return "\n".join(r.log.read_text() for r in self.relays if r.log.exists())


@contextmanager
def relay_fleet(tmp: Path, routes: list[dict[str, Any]], **env: str) -> Iterator[RelayFleet]:
    fleet = RelayFleet(tmp, routes, **env)
    try:
        yield fleet
    finally:
        fleet.stop_all()
