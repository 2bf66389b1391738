"""``relaybus run``: every process of the reference shop, supervised, until Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
from pathlib import Path

import typer

from relaybus.settings import Settings
from relaybus.shop.cli.processes import OPTIONAL_PROCESSES, SHOP_PROCESSES, Shop, command_of
from relaybus.shop.settings import ShopSettings
from relaybus.shop.topology import ensure_shop_topics
from relaybus.terminal import make_console, plain


def run(
    logs: Path = typer.Option(Path(".demo"), help="Folder for the processes' logs."),
    only: list[str] = typer.Option(
        [],
        help=f"Run only these (repeatable): {', '.join(SHOP_PROCESSES)}, "
        f"orders-api-N, inventory-shard-N, {', '.join(OPTIONAL_PROCESSES)}.",
    ),
    metrics_port_base: int = typer.Option(
        0,
        "--metrics-port-base",
        min=0,
        max=65000,
        help="Give the relay and each worker a /metrics port from this one up (0 = none).",
    ),
) -> None:
    """Run the shop: relay, gateway, orders API, the orders and payments workers, an
    inventory worker per shard, the saga, admission and the inventory router, each a
    child process; a child that exits is restarted. SIGINT/SIGTERM stops them all
    (each finishes what it holds). The configured shard set
    (``RELAYBUS_INVENTORY_SHARDS``) is made current first.

    Example: relaybus run --only relay --only saga
    """
    unknown = []
    for name in only:
        try:
            command_of(name, ShopSettings())
        except KeyError:
            unknown.append(name)
    if unknown:
        raise typer.BadParameter(
            f"unknown process {', '.join(unknown)}: use {', '.join(SHOP_PROCESSES)}, "
            "inventory-shard-N or inventory",
            param_hint="--only",
        )
    console = make_console()
    shop = ShopSettings()
    asyncio.run(ensure_shop_topics(Settings().kafka, shop))
    processes = Shop(logs, shop, names=only or None)
    endpoints = processes.expose_metrics(metrics_port_base) if metrics_port_base else {}
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    processes.start_all()
    console.print(
        f"running {', '.join(processes.children)} (logs in {plain(str(logs))}/); Ctrl-C stops"
    )
    if endpoints:
        console.print("metrics, for the console:")
        console.print(plain(f"RELAYBUS_CONSOLE_METRICS_ENDPOINTS='{json.dumps(endpoints)}'"))
    try:
        while not stop.wait(1.0):
            for name in processes.supervise():
                console.print(plain(f"{name} exited and was restarted (log: {logs}/{name}.log)"))
    finally:
        processes.stop_all()
