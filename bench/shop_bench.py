"""The flash sale as its users feel it: the shop's pipeline rate, latencies and CPU.

For each variant of the shop (its processes started afresh with the variant's
environment, every other setting the shop's default):

1. **Maximum sustained rate**: ``--max-orders`` orders placed as fast as
   ``--concurrency`` clients can (closed loop); the rate is the orders finished
   (CONFIRMED, CANCELLED or REJECTED) per second from the first order's commit to the
   last one's final status: what the pipeline keeps up with, not what the API accepts.
2. **Open loop** at ``--loads`` (shares of that maximum) for ``--seconds`` each, then
   an **overload** at ``--overload`` times it for ``--overload-seconds``: orders are
   sent on a fixed schedule whatever the answers (coordinated-omission-safe: a
   request's latency counts from when it *should* have been sent; every sample kept).
   Reported per phase: accepted/s, finished/s, ``POST /orders`` p50/p99, commit → final
   status p50/p99/p99.9, the answers by HTTP status, and **CPU milliseconds per
   finished order by process** (``/proc``: each shop process, PostgreSQL, Kafka,
   Redis, RabbitMQ and this load generator), from the phase's first request until
   its last order is final.

From the CPU table: the machine's bound is ``cores * 1000 / (CPU ms per order)``
orders per second, and the stage that spends the most is named.

    .venv/bin/python -m bench.shop_bench [--max-orders 1500] [--seconds 20]
        [--loads 0.1 0.5 0.8] [--overload 3] [--overload-seconds 30] [--variants …]

Writes ``bench/results/shop.{json,md}``; ``relaybus bench`` plots it as
``docs/shop-latency.png``. Each shop process logs to ``--logs`` (``.bench-shop/``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.cpu import cpu_seconds, pids_named, server_cpu_seconds
from bench.report import Comparison, Series, amend, results_dir, write
from relaybus.db import create_engine
from relaybus.settings import Settings
from relaybus.shop.cli.flashsale import Workload, issue_keys, seed, wait_final, warm_up
from relaybus.shop.cli.openloop import Orders, Sample, open_loop, post
from relaybus.shop.cli.processes import Shop
from relaybus.shop.settings import ShopSettings
from relaybus.shop.topology import ensure_shop_topics

# Variants compared in one run: name -> environment of the shop's processes.
VARIANTS: dict[str, dict[str, str]] = {
    # The shop before load shedding: the API takes every order, the queue is unbounded.
    "no-shedding": {"RELAYBUS_ORDERS_BACKLOG_SECONDS": "0"},
    "as-shipped": {},
    # Degradation by queueing: over the limit, up to 500 requests wait in the shaper.
    "queueing": {"RELAYBUS_ORDERS_BACKLOG_QUEUE": "500"},
    # Tried: faust's transactions five times rarer (docs/saga.md, "Measured").
    "saga-commit-0.5s": {"RELAYBUS_SAGA_COMMIT_INTERVAL": "0.5"},
}
BASELINE = "no-shedding"
DEFAULT_VARIANTS = ["no-shedding", "as-shipped", "queueing"]  # and saga-commit-0.5s on request
FINAL = ("CONFIRMED", "CANCELLED", "REJECTED")
SERVERS = {
    "PostgreSQL": "postgres",
    "Kafka": "java",
    "Redis": "redis-server",
    "RabbitMQ": "beam.smp",
}


@dataclass
class Phase:
    """What one phase measured."""

    name: str
    offered: float  # orders/s asked for (0: closed loop)
    seconds: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    final_ms: list[float] = field(default_factory=list)  # commit -> final status
    finished: int = 0
    finished_seconds: float = 0.0  # first commit -> last final status
    unfinished: int = 0
    statuses: Counter[str] = field(default_factory=Counter)  # final order statuses
    cpu_ms: dict[str, float] = field(default_factory=dict)  # per process, whole phase

    @property
    def accepted(self) -> list[int]:
        return [s.order_id for s in self.samples if s.order_id is not None]

    @property
    def finished_rate(self) -> float:
        return self.finished / self.finished_seconds if self.finished_seconds else 0.0

    def summary(self) -> dict[str, Any]:
        post = sorted(s.latency_ms for s in self.samples)
        shed = sorted(s.latency_ms for s in self.samples if s.status == 429)
        per_order = {k: v / max(self.finished, 1) for k, v in self.cpu_ms.items()}
        return {
            "phase": self.name,
            "offered_per_s": round(self.offered, 1),
            "requests": len(self.samples),
            "accepted_per_s": round(len(self.accepted) / self.seconds, 1) if self.seconds else 0,
            "finished": self.finished,
            "unfinished": self.unfinished,
            "finished_per_s": round(self.finished_rate, 1),
            "http": dict(Counter(str(s.status) for s in self.samples)),
            "order_statuses": dict(self.statuses),
            "post_ms": percentiles(post),
            "shed_ms": percentiles(shed),
            # the same answers timed from when they were sent, not when they were due:
            # the server's part, without the load generator's own lag
            "shed_after_send_ms": percentiles(
                sorted(s.latency_ms - s.lag_ms for s in self.samples if s.status == 429)
            ),
            "load_generator_lag_ms": percentiles(sorted(s.lag_ms for s in self.samples)),
            "commit_to_final_ms": percentiles(sorted(self.final_ms)),
            "cpu_ms_per_order": {k: round(v, 2) for k, v in per_order.items()},
            "cpu_ms_per_order_total": round(sum(per_order.values()), 2),
        }


def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p99/p99.9/max of sorted ``values`` (nearest rank); {} when empty."""
    if not values:
        return {}

    def at(q: float) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))], 1)

    return {"p50": at(0.5), "p99": at(0.99), "p99.9": at(0.999), "max": round(values[-1], 1)}


class CpuMeter:
    """CPU seconds so far of each shop process and each server, by name."""

    def __init__(self, shop: Shop) -> None:
        self.shop = shop

    def read(self) -> dict[str, float]:
        seen = {
            name: cpu_seconds([child.proc.pid])
            for name, child in self.shop.children.items()
            if child.proc is not None
        }
        seen["PostgreSQL"] = server_cpu_seconds("postgres")
        for label, comm in SERVERS.items():
            if label != "PostgreSQL":
                seen[label] = cpu_seconds(pids_named(comm))
        seen["load generator"] = cpu_seconds([os.getpid()])
        return seen

    @contextmanager
    def measure(self, into: dict[str, float]) -> Iterator[None]:
        before = self.read()
        yield
        after = self.read()
        for name, value in after.items():
            into[name] = (value - before.get(name, value)) * 1000


async def closed_loop(
    client: httpx.AsyncClient, urls: list[str], orders: Orders, count: int, concurrency: int
) -> tuple[list[Sample], float]:
    """Requests from ``concurrency`` clients, each sending when answered (and after a
    429's ``Retry-After``), until ``count`` orders are accepted."""
    t0 = time.perf_counter()
    samples: list[Sample] = []
    accepted = 0

    async def one_client() -> None:
        nonlocal accepted
        while accepted < count:
            url = urls[len(samples) % len(urls)]
            sample = await post(client, url, orders, time.perf_counter() - t0, t0)
            samples.append(sample)
            if sample.order_id is not None:
                accepted += 1
            elif sample.status == 429:
                await asyncio.sleep(float(sample.retry_after or 1))

    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return samples, time.perf_counter() - t0


async def settle(engine: AsyncEngine, phase: Phase, within: float, processes: Shop) -> None:
    """Wait until every accepted order of ``phase`` is final (or ``within`` seconds
    pass), then read commit -> final status of each. Raises ``ChildFailed`` if a shop
    process exited meanwhile (a stalled pipeline is not measured as a slow one)."""
    ids = phase.accepted
    query = text(
        "SELECT o.id, o.status, o.created_at, "
        "(SELECT max(h.at) FROM orders.history h WHERE h.order_id = o.id "
        " AND h.status IN ('CONFIRMED', 'CANCELLED', 'REJECTED')) AS finished_at "
        "FROM orders.orders o WHERE o.id = ANY(:ids)"
    )
    await wait_final(engine, ids, within, tick=processes.check)
    async with engine.connect() as conn:
        rows = (await conn.execute(query, {"ids": ids})).all()
    first = min((r.created_at for r in rows), default=None)
    last = None
    for row in rows:
        phase.statuses[row.status] += 1
        if row.status in FINAL and row.finished_at is not None:
            phase.finished += 1
            phase.final_ms.append((row.finished_at - row.created_at).total_seconds() * 1000)
            last = row.finished_at if last is None else max(last, row.finished_at)
        else:
            phase.unfinished += 1
    if first is not None and last is not None:
        phase.finished_seconds = max((last - first).total_seconds(), 1e-3)


async def quiet(meter: CpuMeter, below_ms: float, within: float = 120.0) -> None:
    """Wait until the shop spends under ``below_ms`` CPU ms per second (a read model
    recovering its table at start is not the pipeline's cost), or ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        spent: dict[str, float] = {}
        with meter.measure(spent):
            await asyncio.sleep(2.0)
        if sum(v for k, v in spent.items() if k != "load generator") / 2.0 < below_ms:
            return


def peak_rss_mb(processes: Shop) -> dict[str, float]:
    """Each shop process's and server's peak resident memory (``VmHWM``), MB."""
    peaks: dict[str, float] = {}
    named = {n: [c.proc.pid] for n, c in processes.children.items() if c.proc is not None}
    named.update({label: pids_named(comm) for label, comm in SERVERS.items()})
    for name, pids in named.items():
        for pid in pids:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    mb = int(line.split()[1]) / 1024
                    peaks[name] = round(max(peaks.get(name, 0.0), mb), 1)
    return peaks


async def measure_variant(
    name: str, env: dict[str, str], args: argparse.Namespace, logs: Path, peaks: dict[str, float]
) -> list[Phase]:
    """Start the shop with ``env``, run every phase, stop it."""
    shop = ShopSettings()
    settings = Settings()
    processes = Shop(
        logs / name.replace(" ", "-"),
        shop,
        env={
            "RELAYBUS_GATEWAY_FAILURE_RATE": str(args.failure_rate),
            "RELAYBUS_GATEWAY_TIMEOUT_RATE": str(args.timeout_rate),
            **env,
        },
    )
    engine = create_engine(settings.database_url)
    phases: list[Phase] = []
    processes.start_all()
    try:
        processes.wait_http()
        await ensure_shop_topics(settings.kafka, shop)
        run = uuid.uuid4().hex[:8]
        await warm_up(engine, shop.orders_api_url, run, 300)
        skus = await seed(engine, Workload(products=5, stock=10_000_000), run)
        keys = await issue_keys(engine, [f"bench-{run}-{n}" for n in range(args.users)])
        orders = Orders(skus, keys)
        meter = CpuMeter(processes)
        urls = shop.orders_api_urls  # every replica, in turn (as the shop's clients do)
        limits = httpx.Limits(
            max_connections=args.connections, max_keepalive_connections=args.connections
        )
        await quiet(meter, args.quiet_ms)
        idle = Phase("idle", 0.0)
        with meter.measure(idle.cpu_ms):
            idle.seconds = await asyncio.sleep(args.idle_seconds, args.idle_seconds)
        phases.append(idle)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            tops = []
            for _ in range(args.rounds):
                top = Phase("maximum", 0.0)
                with meter.measure(top.cpu_ms):
                    top.samples, top.seconds = await closed_loop(
                        client, urls, orders, args.max_orders, args.concurrency
                    )
                    await settle(engine, top, args.settle, processes)
                phases.append(top)
                tops.append(top.finished_rate)
                print(f"  {name}: maximum {top.finished_rate:.1f} finished/s", flush=True)
            peak = max(statistics.median(tops), 1.0)
            plan = [(f"{round(load * 100)} %", load, args.seconds) for load in args.loads]
            if args.overload:
                plan.append((f"overload {args.overload:g}x", args.overload, args.overload_seconds))
            for label, load, seconds in plan:
                phase = Phase(label, peak * load)
                with meter.measure(phase.cpu_ms):
                    phase.samples, phase.seconds = await open_loop(
                        client, urls, orders, phase.offered, seconds
                    )
                    await settle(engine, phase, args.settle, processes)
                phases.append(phase)
                s = phase.summary()
                print(
                    f"  {name}: {label}: {s['finished_per_s']}/s finished, post "
                    f"{s['post_ms']}, final {s['commit_to_final_ms']}",
                    flush=True,
                )
        peaks.update(peak_rss_mb(processes))
    finally:
        processes.stop_all()
        await engine.dispose()
    return phases


def by_name(phases: list[Phase], name: str) -> Phase:
    """The last phase called ``name`` (the maximum is measured ``--rounds`` times)."""
    return [p for p in phases if p.name == name][-1]


def maximum_rates(phases: list[Phase]) -> list[float]:
    return [p.finished_rate for p in phases if p.name == "maximum"]


def idle_line(phase: Phase) -> list[str]:
    """What the shop spends doing nothing (polls, heartbeats, transaction timers)."""
    per_second = {k: v / phase.seconds for k, v in phase.cpu_ms.items() if k != "load generator"}
    top = sorted(per_second.items(), key=lambda kv: -kv[1])[:5]
    return [
        f"Idle, no orders, {phase.seconds:g} s: the shop spends "
        f"{sum(per_second.values()):.0f} CPU ms per second "
        f"({', '.join(f'{k} {v:.0f}' for k, v in top)}, …)."
    ]


def cpu_table(phase: Phase) -> list[str]:
    per_order = sorted(phase.summary()["cpu_ms_per_order"].items(), key=lambda kv: -kv[1])
    total = sum(v for _, v in per_order)
    cores = os.cpu_count() or 1
    lines = [
        f"CPU ms per finished order, phase `{phase.name}` ({phase.finished} orders): "
        f"{total:.1f} ms in all, so {cores} cores are spent at "
        f"**{cores * 1000 / total:.0f} orders/s**; the stage that spends most: "
        f"**{per_order[0][0]}**.",
        "",
        "| process | CPU ms / order | share |",
        "| --- | --- | --- |",
    ]
    for name, value in per_order:
        lines.append(f"| {name} | {value:.2f} | {100 * value / total:.0f} % |")
    return lines


def phase_table(variant: str, phases: list[Phase]) -> list[str]:
    lines = [
        f"### {variant}",
        "",
        "| phase | offered/s | accepted/s | finished/s | POST p50 / p99 ms | "
        "commit → final p50 / p99 / p99.9 ms | HTTP answers | unfinished |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for phase in phases:
        if phase.name == "idle":
            continue
        s = phase.summary()
        post, final = s["post_ms"], s["commit_to_final_ms"]
        lines.append(
            f"| {phase.name} | {s['offered_per_s'] or 'closed loop'} | {s['accepted_per_s']} | "
            f"{s['finished_per_s']} | {post.get('p50', '—')} / {post.get('p99', '—')} | "
            f"{final.get('p50', '—')} / {final.get('p99', '—')} / {final.get('p99.9', '—')} | "
            f"{', '.join(f'{k}: {v}' for k, v in sorted(s['http'].items()))} | "
            f"{s['unfinished']} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-orders", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--loads", type=float, nargs="*", default=[0.1, 0.5, 0.8])
    parser.add_argument("--overload", type=float, default=3.0)
    parser.add_argument("--overload-seconds", type=float, default=30.0)
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--failure-rate", type=float, default=0.2)
    parser.add_argument("--timeout-rate", type=float, default=0.0)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--settle", type=float, default=300.0)
    parser.add_argument("--quiet-ms", type=float, default=400.0)
    parser.add_argument(
        "--rounds", type=int, default=1, help="Times the maximum rate is measured per variant."
    )
    parser.add_argument("--variants", nargs="*", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    parser.add_argument("--logs", type=Path, default=Path(".bench-shop"))
    args = parser.parse_args()
    peaks: dict[str, dict[str, float]] = {v: {} for v in args.variants}
    results = {
        v: asyncio.run(measure_variant(v, VARIANTS[v], args, args.logs, peaks[v]))
        for v in args.variants
    }
    candidate = "as-shipped" if "as-shipped" in results else args.variants[-1]
    baseline = BASELINE if BASELINE in results else candidate

    def pick(variant: str, phase: str, key: str, q: str) -> list[float]:
        found = [p for p in results[variant] if p.name == phase]
        return [found[0].summary()[key].get(q, 0.0)] if found else []

    def versus(label: str, phase: str, key: str, q: str, target: float) -> Comparison | None:
        mine, theirs = pick(candidate, phase, key, q), pick(baseline, phase, key, q)
        if not mine or not theirs:
            return None
        return Comparison(
            label,
            Series(candidate, "ms", mine),
            Series(baseline, "ms", theirs),
            target,
            higher_is_better=False,
            target_on="value",
        )

    comparisons = [
        Comparison(
            "finished orders/s at the maximum sustained rate",
            Series(candidate, "orders/s", maximum_rates(results[candidate])),
            Series(baseline, "orders/s", maximum_rates(results[baseline])),
            5.0,
        )
    ]
    overload = f"overload {args.overload:g}x"
    for found in (
        versus("commit → final p99 at 50 % of the maximum", "50 %", "commit_to_final_ms",
               "p99", 2000.0),
        versus("POST /orders p99 at 50 % of the maximum", "50 %", "post_ms", "p99", 250.0),
        versus(f"commit → final p99 of admitted orders, {overload}", overload,
               "commit_to_final_ms", "p99", 5000.0),
        versus(f"shed answer (429) p99 from sending, {overload}", overload,
               "shed_after_send_ms", "p99", 50.0),
        versus(f"shed answer (429) p99 from when due, {overload}", overload, "shed_ms",
               "p99", 50.0),
    ):  # fmt: skip
        if found is not None:
            comparisons.append(found)
    params = {k: v for k, v in vars(args).items() if k != "logs"}
    md = write("shop", params, comparisons)
    extra: list[str] = ["", "## Phases", ""]
    for variant, phases in results.items():
        extra += [*phase_table(variant, phases), ""]
        extra += [*cpu_table(by_name(phases, "maximum")), ""]
        extra += [*idle_line(by_name(phases, "idle")), ""]
        extra += [
            "Peak resident memory (VmHWM), MB: "
            + ", ".join(f"{k} {v:g}" for k, v in sorted(peaks[variant].items())),
            "",
        ]
    amend(
        "shop",
        md + "\n".join(extra) + "\n",
        phases={v: [p.summary() for p in ps] for v, ps in results.items()},
        peak_rss_mb=peaks,
    )
    print(f"wrote {results_dir() / 'shop.md'}")


if __name__ == "__main__":
    main()
