"""Orders API benchmark: ``POST /orders`` requests/s at the machine's limit, with the
outbox write (the real service) and without it (the same service whose order INSERT
carries no event), next to ``GET /healthz`` (framework + one database round trip).

Each variant is its own uvicorn process (one worker, like ``relaybus serve
orders-api``). The load comes from ``hey`` (a Go HTTP load generator: a Python client
saturated first, at about a quarter of the server's rate), ``--concurrency``
connections, the same body each time and no ``Idempotency-Key`` (hey cannot vary
it; the key costs one more INSERT). Rounds are interleaved. Everything shares the
machine's two cores with PostgreSQL, as in the demo.

    go install github.com/rakyll/hey@v0.1.4      # once; found on PATH or ~/go/bin
    .venv/bin/python -m bench.orders_api_bench [--seconds 10] [--rounds 5]

Writes ``bench/results/orders_api.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import uvicorn
from sqlalchemy import text

from bench.report import Comparison, Series, write
from bench.writes_bench import NoEvent
from relaybus.db import create_engine, session_factory
from relaybus.settings import Settings
from relaybus.shop.producers.orders.api import create_app
from relaybus.shop.producers.orders.credentials import issue_key
from relaybus.shop.producers.orders.store import OrderStore, add_products
from relaybus.shop.settings import ShopSettings

PORTS = {"outbox": 18181, "plain": 18182}
SKU = "bench-api-sku"
# One customer name per run: the clean-up removes exactly this run's orders.
CUSTOMER = f"bench-{uuid.uuid4().hex[:8]}"
BODY = json.dumps({"customer": CUSTOMER, "items": [{"product": SKU, "quantity": 1}]})
CLEAN_UP = (
    # the events POST /orders writes: order.requested and order.status
    "DELETE FROM outbox WHERE aggregatetype IN ('order-request', 'order-status') "
    "AND payload->>'customer' = :c",
    "DELETE FROM outbox_archive WHERE aggregatetype IN ('order-request', 'order-status') "
    "AND payload->>'customer' = :c",
    "DELETE FROM orders.history WHERE order_id IN "
    "(SELECT id FROM orders.orders WHERE customer = :c)",
    "DELETE FROM orders.orders WHERE customer = :c",
    "DELETE FROM orders.api_keys WHERE customer = :c",
)


def serve(variant: str) -> None:
    """Run one variant's API (a child process of the benchmark)."""
    settings = Settings()
    # No deadline sweep: these orders have no saga, and the sweep's writes would
    # compete with the measured requests.
    shop = ShopSettings(orders_api_port=PORTS[variant], saga_deadline=1e9)
    store = OrderStore(NoEvent()) if variant == "plain" else None
    app = create_app(settings, shop, store)
    uvicorn.run(app, host="127.0.0.1", port=PORTS[variant], log_level="warning", access_log=False)


def hey() -> str:
    """The ``hey`` binary (PATH, then ~/go/bin), or exit saying how to install it."""
    found = shutil.which("hey") or str(Path.home() / "go" / "bin" / "hey")
    if not Path(found).exists():
        sys.exit("orders_api_bench needs hey: go install github.com/rakyll/hey@v0.1.4")
    return found


def load(url: str, path: str, seconds: float, concurrency: int, key: str = "") -> float:
    """Requests/s ``hey`` completed in ``seconds`` with ``concurrency`` connections;
    every answer must be the success status (else the run fails)."""
    argv = [hey(), "-z", f"{seconds}s", "-c", str(concurrency)]
    if path == "/orders":
        # hey takes headers on its command line only: the key is this run's throwaway
        # customer's, revoked when the run ends (clean_up).
        argv += ["-m", "POST", "-T", "application/json", "-d", BODY]
        argv += ["-H", f"Authorization: Bearer {key}"]
    out = subprocess.run([*argv, url + path], capture_output=True, text=True, check=True).stdout
    want = "[202]" if path == "/orders" else "[200]"
    codes = re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)
    if not codes or any(f"[{code}]" != want for code, _ in codes):
        raise RuntimeError(f"{path}: unexpected answers {codes}")
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert rate is not None, out
    return float(rate.group(1))


async def clean_up(settings: Settings) -> None:
    """Remove this run's orders and their unpublished events (a shop running on the
    same database must not process tens of thousands of benchmark orders)."""
    engine = create_engine(settings.database_url)
    async with engine.begin() as conn:
        for statement in CLEAN_UP:
            await conn.execute(text(statement), {"c": CUSTOMER})
    await engine.dispose()


async def prepare(settings: Settings) -> str:
    """The product, and an API key for this run's customer (returned)."""
    engine = create_engine(settings.database_url)
    async with session_factory(engine)() as session, session.begin():
        await add_products(session, {SKU: 100})
        issued = await issue_key(session, CUSTOMER)
    await engine.dispose()
    return issued.token


def wait_ready(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not start")


def start_servers() -> dict[str, subprocess.Popen[bytes]]:
    """One server process per variant (this module's ``serve`` entry point)."""
    return {
        v: subprocess.Popen(
            [sys.executable, "-m", "bench.orders_api_bench", "serve", v], env=os.environ.copy()
        )
        for v in PORTS
    }


async def main(seconds: float, rounds: int, concurrency: int) -> None:
    settings = Settings()
    key = await prepare(settings)
    servers = start_servers()
    urls = {v: f"http://127.0.0.1:{port}" for v, port in PORTS.items()}
    series = {
        "outbox": Series("POST /orders (order + order.created through the outbox)", "req/s"),
        "plain": Series("POST /orders, the same service without the event", "req/s"),
        "health": Series("GET /healthz (framework + SELECT 1)", "req/s"),
    }
    try:
        for url in urls.values():
            wait_ready(url)
        for v in PORTS:  # warm-up: connections, statement caches
            load(urls[v], "/orders", 2, concurrency, key)
        for n in range(rounds):
            for v in ("outbox", "plain") if n % 2 == 0 else ("plain", "outbox"):
                series[v].values.append(load(urls[v], "/orders", seconds, concurrency, key))
            series["health"].values.append(load(urls["outbox"], "/healthz", seconds, concurrency))
            print(
                f"round {n + 1}: "
                + ", ".join(f"{k} {s.values[-1]:.0f}/s" for k, s in series.items()),
                flush=True,
            )
    finally:
        for proc in servers.values():
            proc.terminate()
            proc.wait(timeout=30)
        await clean_up(settings)
    print(
        write(
            "orders_api",
            {"seconds": seconds, "rounds": rounds, "concurrency": concurrency},
            [
                Comparison(
                    "POST /orders with outbox / without event",
                    series["outbox"],
                    series["plain"],
                    None,
                ),
                Comparison(
                    "POST /orders with outbox / GET /healthz",
                    series["outbox"],
                    series["health"],
                    None,
                ),
            ],
        )
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("--seconds", type=float, default=10.0)
        parser.add_argument("--rounds", type=int, default=5)
        parser.add_argument("--concurrency", type=int, default=32)
        args = parser.parse_args()
        asyncio.run(main(args.seconds, args.rounds, args.concurrency))
