"""``relaybus demo``: the flash sale end to end, with a report (the README's main job)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from relaybus.consumers.dlq_admin import BROKER_ERRORS
from relaybus.db import create_engine
from relaybus.settings import Settings
from relaybus.shop.cli.flashsale import (
    Placed,
    Workload,
    customers_of,
    issue_keys,
    place_orders,
    seed,
    wait_final,
    warm_up,
)
from relaybus.shop.cli.openloop import Orders, open_loop
from relaybus.shop.cli.processes import ChildFailed, Shop
from relaybus.shop.cli.shop_report import ShopReport, collect, dead_letter_count
from relaybus.shop.settings import ShopSettings
from relaybus.shop.topology import ensure_shop_topics
from relaybus.streams.sharding.balancing import make_balancer
from relaybus.terminal import make_console, plain


async def run_flash_sale(
    settings: Settings,
    shop: ShopSettings,
    workload: Workload,
    processes: Shop | None,
    wait: float,
    console: Console | None,
    on_placed: Callable[[int], None] | None = None,
) -> tuple[Placed, ShopReport]:
    """Seed, place every order, wait for every saga, and report. ``processes`` (if
    given) are checked for liveness while waiting; ``on_placed(n)`` runs after each
    accepted order (a test injects faults there)."""
    engine = create_engine(settings.database_url)
    try:
        await ensure_shop_topics(settings.kafka, shop)
        run = uuid.uuid4().hex[:8]
        if console is not None:
            console.print("waiting for one order to go through every process (warm-up)")
        warm = await warm_up(engine, shop.orders_api_url, run, wait)
        dead_before = await dead_letter_count(settings.kafka)
        skus = await seed(engine, workload, run)
        keys = await issue_keys(engine, customers_of(workload))
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=console is None,
        ) as progress:
            placing = progress.add_task("orders placed", total=workload.orders)

            def placed_one(n: int) -> None:
                progress.update(placing, completed=n)
                if on_placed is not None:
                    on_placed(n)

            placed = await place_orders(
                shop.orders_api_urls,
                workload,
                skus,
                keys,
                placed_one,
                make_balancer(shop.orders_api_balancer, shop.orders_api_urls),
            )
            finishing = progress.add_task("orders finished", total=len(placed.order_ids))
            await wait_final(
                engine,
                placed.order_ids,
                wait,
                lambda n: progress.update(finishing, completed=n),
                # Supervised like ``relaybus run``: a child that exits is restarted.
                (lambda: None) if processes is None else processes.supervise,
            )
        dead = await dead_letter_count(settings.kafka) - dead_before
        report = await collect(engine, shop.gateway_base_url, placed.order_ids, skus, dead)
    finally:
        await engine.dispose()
    report.workload = {
        "warm_up_seconds": round(warm, 2),
        "orders_requested": workload.orders,
        "orders_accepted": len(placed.order_ids),
        "http_statuses": {str(k): v for k, v in placed.statuses.items()},
        "client_retries": placed.retries,
        "shed_and_sent_again": placed.shed,
        "connection_retries": placed.transport_retries,
        "retries_with_another_id": placed.retry_mismatches,
        "seconds": round(placed.seconds, 2),
        "orders_per_second": round(placed.rate, 1),
        "post_latency_ms": _post_latency(placed),
        "errors": placed.errors[:10],
        "api_replicas": {
            "balancer": shop.orders_api_balancer,
            "requests": dict(sorted(placed.replicas.items())),
        },
        "process_restarts": {
            name: child.restarts
            for name, child in (processes.children.items() if processes is not None else ())
            if child.restarts
        },
    }
    if placed.retry_mismatches:
        report.problems.append(f"{placed.retry_mismatches} retried requests got another order")
    if placed.errors:
        report.problems.append(f"{len(placed.errors)} requests failed: {placed.errors[0]}")
    return placed, report


async def run_burst(
    settings: Settings, shop: ShopSettings, rate: float, seconds: float, wait: float
) -> dict[str, Any]:
    """Orders sent open loop at ``rate`` per second for ``seconds`` (no retries: what the
    shop answered each), then every admitted one waited for: admitted and shed
    requests, their latencies, commit -> final status of the admitted."""
    engine = create_engine(settings.database_url)
    try:
        run = uuid.uuid4().hex[:8]
        skus = await seed(engine, Workload(products=5, stock=1_000_000), f"{run}-burst")
        keys = await issue_keys(engine, [f"burst-{run}-{n}" for n in range(2000)])
        limits = httpx.Limits(max_connections=2000, max_keepalive_connections=2000)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            samples, _ = await open_loop(
                client, shop.orders_api_urls, Orders(skus, keys), rate, seconds
            )
        admitted = [s.order_id for s in samples if s.order_id is not None]
        finished = await wait_final(engine, admitted, wait)
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT o.created_at, (SELECT max(h.at) FROM orders.history h "
                        "WHERE h.order_id = o.id AND h.status IN "
                        "('CONFIRMED', 'CANCELLED', 'REJECTED')) AS finished_at "
                        "FROM orders.orders o WHERE o.id = ANY(:ids)"
                    ),
                    {"ids": admitted},
                )
            ).all()
    finally:
        await engine.dispose()
    shed = [s for s in samples if s.status == 429]
    return {
        "offered_per_second": round(rate, 1),
        "seconds": seconds,
        "requests": len(samples),
        "admitted": len(admitted),
        "shed_429": len(shed),
        "other_answers": dict(
            Counter(str(s.status) for s in samples if s.status not in (202, 429))
        ),
        "shed_answer_ms": _latency([s.latency_ms for s in shed]),
        "admitted_post_ms": _latency([s.latency_ms for s in samples if s.order_id is not None]),
        "admitted_commit_to_final_ms": _latency(
            [
                (r.finished_at - r.created_at).total_seconds() * 1000
                for r in rows
                if r.finished_at is not None
            ]
        ),
        "admitted_unfinished": len(admitted) - finished,
    }


def _latency(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    if not values:
        return {}
    return {
        "p50": round(values[len(values) // 2], 1),
        "p99": round(values[min(len(values) - 1, int(0.99 * len(values)))], 1),
        "max": round(values[-1], 1),
    }


def _post_latency(placed: Placed) -> dict[str, float]:
    return _latency(placed.latency_ms)


def render(report: ShopReport, console: Console) -> None:
    """The report as tables (every value printed as plain text)."""
    summary = Table(title="flash sale", show_header=False)
    w = report.workload
    rows = [
        ("warm-up: first order through every process", f"{w.get('warm_up_seconds')} s"),
        (
            "orders accepted",
            f"{w.get('orders_accepted')} of {w.get('orders_requested')} "
            f"in {w.get('seconds')} s ({w.get('orders_per_second')}/s)",
        ),
        ("POST /orders latency ms", json.dumps(w.get("post_latency_ms"))),
        (
            "pipeline: orders finished per second",
            f"{report.finished_per_second} (first commit to last final status)",
        ),
        ("commit -> final status ms", json.dumps(report.final_latency_ms)),
        ("shed (429, sent again after Retry-After)", str(w.get("shed_and_sent_again", 0))),
        (
            "client retries (same key)",
            f"{w.get('client_retries')}, {w.get('retries_with_another_id')} got another order",
        ),
        ("requests per API replica", json.dumps(w.get("api_replicas"))),
        ("rejected by admission", str(report.statuses.get("REJECTED", 0))),
        ("confirmed", str(report.statuses.get("CONFIRMED", 0))),
        ("cancelled", str(report.statuses.get("CANCELLED", 0))),
        *(
            (f"  cancelled: {kind}", str(n))
            for kind, n in sorted(report.cancelled_by_reason.items())
        ),
        (
            "unfinished",
            str(
                report.orders
                - report.statuses.get("CONFIRMED", 0)
                - report.statuses.get("CANCELLED", 0)
                - report.statuses.get("REJECTED", 0)
            ),
        ),
        ("gateway charges by status", json.dumps(report.charges, sort_keys=True)),
        ("dead letters", str(report.dead_letters)),
        ("commit -> confirmed ms", json.dumps(report.latency_ms)),
    ]
    for name, value in rows:
        summary.add_row(plain(name), plain(value))
    console.print(summary)
    if report.burst:
        burst = Table(title="burst past capacity (open loop)", show_header=False)
        for name, value in report.burst.items():
            burst.add_row(plain(name.replace("_", " ")), plain(json.dumps(value)))
        console.print(burst)
    products = Table(title="stock: initial = sold + available")
    for column in ("product", "initial", "sold", "available", "conserved"):
        products.add_column(column)
    for line in report.products:
        products.add_row(
            plain(line.sku),
            str(line.initial),
            str(line.sold),
            str(line.available),
            "yes" if line.conserved else "NO",
        )
    console.print(products)
    if report.ok:
        console.print("invariants: all hold")
    else:
        console.print(f"invariants: {len(report.problems)} problems")
        for problem in report.problems[:20]:
            console.print(plain(f"  - {problem}"))


# What the stack being down or unmigrated looks like from here: a one-line error.
DEMO_ERRORS: tuple[type[BaseException], ...] = (
    *BROKER_ERRORS,
    SQLAlchemyError,
    httpx.HTTPError,
    TimeoutError,
)


def demo(
    orders: int = typer.Option(2000, min=1, help="Orders to place."),
    products: int = typer.Option(5, min=1, max=100, help="Products on sale."),
    stock: int = typer.Option(100, min=0, help="Units of each product."),
    users: int = typer.Option(500, min=1, help="Distinct customers."),
    concurrency: int = typer.Option(16, min=1, max=512, help="Requests in flight."),
    failure_rate: float = typer.Option(0.2, min=0, max=1, help="Share of charges declined."),
    timeout_rate: float = typer.Option(0.05, min=0, max=1, help="Share of charges answered late."),
    wait: float = typer.Option(300.0, min=1, help="Seconds to wait for every order to finish."),
    use_running: bool = typer.Option(
        False, help="Use shop processes already running (relaybus run) instead of starting them."
    ),
    logs: Path = typer.Option(Path(".demo"), help="Folder for the started processes' logs."),
    burst: float = typer.Option(
        0.0,
        min=0,
        max=600,
        help="After the sale, this many seconds of orders at 3x the rate the sale "
        "finished them (open loop): what the shop admits and sheds (0: no burst).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Run the flash sale: start the relay, the orders API, the inventory and payments
    services, the payment gateway and the saga; place orders over HTTP; wait until
    every order is CONFIRMED or CANCELLED; check the invariants; print a report; stop
    what it started. Exit status 1 if an invariant does not hold.

    With ``--burst S``, S more seconds of orders at three times the rate the sale
    finished them, sent on a schedule whatever the answers: the report says how many
    the shop admitted and shed (429 with Retry-After) and how fast each was answered.

    Example: relaybus demo --orders 500 --failure-rate 0.3 --burst 30
    """
    console = make_console(stderr=as_json)
    shop = ShopSettings(gateway_failure_rate=failure_rate, gateway_timeout_rate=timeout_rate)
    workload = Workload(orders, products, stock, users, concurrency)
    processes = None
    if not use_running:
        env = {
            "RELAYBUS_GATEWAY_FAILURE_RATE": str(failure_rate),
            "RELAYBUS_GATEWAY_TIMEOUT_RATE": str(timeout_rate),
        }
        processes = Shop(logs, shop, env=env)
        console.print(f"starting the shop's processes (logs in {plain(str(logs))}/)")
        processes.start_all()
    try:
        if processes is not None:
            processes.wait_http()
        _, report = asyncio.run(
            run_flash_sale(Settings(), shop, workload, processes, wait, console)
        )
        if burst and report.finished_per_second:
            rate = 3 * report.finished_per_second
            console.print(f"burst: {rate:.0f} orders/s for {burst:g} s (3x the sale's rate)")
            report.burst = asyncio.run(run_burst(Settings(), shop, rate, burst, wait))
            if report.burst["admitted_unfinished"]:
                report.problems.append(
                    f"{report.burst['admitted_unfinished']} admitted burst orders did not finish"
                )
    except ChildFailed as err:
        make_console(stderr=True).print(plain(f"demo failed: {err}"))
        raise typer.Exit(1) from None
    except DEMO_ERRORS as err:
        make_console(stderr=True).print(
            plain(
                f"demo failed: {err!r} (is the stack up and migrated? "
                "relaybus stack up && relaybus db upgrade)"
            )
        )
        raise typer.Exit(1) from None
    finally:
        if processes is not None:
            processes.stop_all()
    if as_json:
        print(json.dumps(report.as_json(), indent=2, sort_keys=True))
    else:
        render(report, console)
    if not report.ok:
        raise typer.Exit(1)
