"""``relaybus run --metrics-port-base``: the relay and each worker of the shop serve
their Prometheus metrics on consecutive loopback ports, and the supervisor prints the
endpoints in the form the console's setting takes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from urllib.request import urlopen

from tests.support.cli import REPO
from tests.support.console import free_port
from tests.support.poll import eventually


def scrape(url: str) -> str:
    with urlopen(url, timeout=2) as response:
        return str(response.read().decode())


async def test_the_relay_and_a_worker_serve_metrics_under_run(tmp_path: Path) -> None:
    base = free_port()
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "relaybus"), "run", "--logs", str(tmp_path),
        "--only", "relay", "--only", "orders", "--metrics-port-base", str(base),
        cwd=REPO, env={**os.environ, "COLUMNS": "400"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        printed = ""
        while "RELAYBUS_CONSOLE_METRICS_ENDPOINTS=" not in printed:
            line = await asyncio.wait_for(proc.stdout.readline(), 120)
            assert line, f"relaybus run ended early: {printed}"
            printed += line.decode()
        setting = printed.split("RELAYBUS_CONSOLE_METRICS_ENDPOINTS='", 1)[1].split("'", 1)[0]
        endpoints = json.loads(setting)
        assert endpoints == {
            "relay": f"http://127.0.0.1:{base}/metrics",
            "orders": f"http://127.0.0.1:{base + 1}/metrics",
        }

        async def served() -> bool:
            try:
                relay = await asyncio.to_thread(scrape, endpoints["relay"])
                orders = await asyncio.to_thread(scrape, endpoints["orders"])
            except OSError:
                return False
            return "relaybus_relay_partitions_held" in relay and (
                "relaybus_worker_messages_total" in orders
            )

        await eventually(served, within=120, what="relay and worker metrics served")
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 90)
    assert proc.returncode == 0
