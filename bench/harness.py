"""The benchmark scenarios ``relaybus bench`` runs, and ``docs/benchmarks.md``.

Each scenario is a module of ``bench/`` run as its own process (``python -m
bench.<module> ARGS``): a scenario's memory, GC state and event loop never leak
into the next one. Each module measures its candidates against baselines in the
same run (rounds interleaved) and writes ``<results>/<scenario>.json`` through
``bench.report``; this module only chooses the arguments and renders the docs page
from the JSON files.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.report import ratio_text, results_dir

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "benchmarks.md"


@dataclass(frozen=True)
class Scenario:
    """One benchmark module with its full and its smoke (``--quick``) arguments.
    ``needs`` names a program it needs on PATH (skipped, saying so, without it)."""

    name: str
    module: str
    summary: str
    quick: str  # the smoke run's arguments, space-separated
    needs: str | None = None


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "latency",
            "bench.latency_bench",
            "commit -> handler applied, open loop at 10/50/80 % of the maximum rate, "
            "Kafka and RabbitMQ, next to raw client pairs; NOTIFY on and off",
            "--seconds 1 --max-events 600 --loads 0.5 --rounds 1",
        ),
        Scenario(
            "scaling",
            "bench.scaling_bench",
            "relay throughput with 1, 2 and 4 relay processes over 1 to 64 partitions, "
            "with the relays' and PostgreSQL's CPU",
            "--events 1000 --rounds 1 --relays 1 2 --partitions 4",
        ),
        Scenario(
            "archive",
            "bench.archive_bench",
            "relay drain rate and `outbox status` time with 0, 1 M and 10 M archived rows",
            "--events 1000 --rounds 1 --sizes 5000 --status-calls 3",
        ),
        Scenario(
            "relay",
            "bench.relay_bench",
            "relay throughput vs raw aiokafka / aio-pika, outbox write cost, faststream-outbox "
            "and pgqueuer as peers",
            "--events 1000 --rounds 1 --transactions 300 --insert-rounds 1 "
            "--pgbench-seconds 1 --peer-events 1000",
        ),
        Scenario(
            "writes",
            "bench.writes_bench",
            "outbox write throughput with 1 to 64 writers, and the shop's order transaction "
            "with and without its events next to pgbench running the same SQL",
            "--writers 1 4 --transactions 200 --orders 80 --rounds 1 --pgbench-seconds 1",
        ),
        Scenario(
            "cdc",
            "bench.cdc_bench",
            "the relay's cost to the database: pgbench writers alone and next to the polling "
            "relay (with and without its archive), the WAL relay and Debezium (writer "
            "throughput, PostgreSQL CPU per event, commit -> topic latency)",
            "--seconds 1 --warmup 1 --paced-seconds 1 --rounds 1 --sources alone wal",
        ),
        Scenario(
            "settle",
            "bench.settle_bench",
            "PostgreSQL CPU per published row of the polling relay's settle and the archive's "
            "retention: one-table archive (0009), partitioned by day (0010), no archive",
            "--rows 1000 --rounds 1",
        ),
        Scenario(
            "consumer",
            "bench.consumer_bench",
            "idempotent consumer vs raw aiokafka loop and FastStream; 1, 2 and 4 worker "
            "processes in one group",
            "--messages 1000 --rounds 1 --workers 1 2",
        ),
        Scenario(
            "tracing",
            "bench.tracing_bench",
            "the relay and a consumer with tracing off, at a 10 % sample ratio and at 100 % "
            "(spans exported over OTLP/HTTP to a sink that discards them)",
            "--events 1000 --messages 1000 --rounds 1",
        ),
        Scenario(
            "streams",
            "bench.streams_bench",
            "rate limiters, hash ring, caches, admission and router vs libraries and raw loops",
            "--rounds 1 --records 1000 --ring-keys 2000",
        ),
        Scenario(
            "inventory",
            "bench.inventory_contention",
            "reservations/s on one hot product by locking mechanism",
            "--seconds 1 --rounds 1",
        ),
        Scenario(
            "shop",
            "bench.shop_bench",
            "the flash sale as users feel it: maximum sustained finished orders/s, open loop "
            "at 10/50/80 % of it and a 3x overload (accepted, shed, POST and commit -> final "
            "percentiles), CPU ms per order by process; without and with load shedding, "
            "and with queueing",
            "--max-orders 60 --seconds 3 --loads 0.5 --overload 3 --overload-seconds 3 "
            "--idle-seconds 1 --quiet-ms 100000 --variants as-shipped",
        ),
        Scenario(
            "orders_api",
            "bench.orders_api_bench",
            "POST /orders with and without the outbox write (hey as the load)",
            "--seconds 1 --rounds 1",
            needs="hey",
        ),
    )
}


def which(program: str) -> str | None:
    """``program`` on PATH or in ``~/go/bin`` (where ``go install`` puts it)."""
    found = shutil.which(program)
    if found is None:
        candidate = Path.home() / "go" / "bin" / program
        found = str(candidate) if candidate.exists() else None
    return found


def command(scenario: Scenario, quick: bool, rounds: int | None) -> list[str]:
    """The argv that runs ``scenario``."""
    argv = [sys.executable, "-m", scenario.module, *(scenario.quick.split() if quick else ())]
    if rounds is not None:
        argv += ["--rounds", str(rounds)]
    return argv


def run(scenario: Scenario, quick: bool, rounds: int | None, results: Path) -> int:
    """Run one scenario (its output streams through); its exit code."""
    env = {**os.environ, "RELAYBUS_BENCH_RESULTS": str(results)}
    if scenario.needs:
        found = which(scenario.needs)
        if found is not None:
            env["PATH"] = f"{Path(found).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        command(scenario, quick, rounds), cwd=REPO, env=env, check=False
    ).returncode


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = 0
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        first = meminfo.read_text().splitlines()[0].split()
        memory = int(first[1]) // 1024 // 1024 if first[0] == "MemTotal:" else 0
    return {
        "cpu": model or platform.processor() or "unknown",
        "cpus": os.cpu_count(),
        "memory_gib": memory,
        "os": platform.platform(terse=True),
        "python": platform.python_version(),
    }


def render(results: Path, command_line: str) -> str:
    """``docs/benchmarks.md`` from every ``<scenario>.json`` in ``results``."""
    facts = machine()
    lines = [
        "# Benchmarks",
        "",
        "Generated by `relaybus bench` from `bench/results/*.json`; do not edit by hand.",
        "",
        f"- generated: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- command: `{command_line}` (stack up, database migrated)",
        f"- machine: {facts['cpu']}, {facts['cpus']} CPUs, {facts['memory_gib']} GiB, "
        f"{facts['os']}, Python {facts['python']}; shared and noisy: only ratios "
        "against a baseline measured in the same run mean anything",
        "",
        "Every row: the candidate's median over the rounds, the baseline's median, their "
        "ratio, the spread (min to max of the candidate's rounds), the target and whether "
        "it is met. Rounds of a candidate and its baseline are interleaved.",
        "",
    ]
    for name, scenario in SCENARIOS.items():
        path = results / f"{name}.json"
        lines += [f"## {name}", "", scenario.summary + ".", ""]
        if not path.exists():
            lines += ["Not measured yet: `relaybus bench " + name + "`.", ""]
            continue
        data = json.loads(path.read_text())
        params = ", ".join(f"{k}={v}" for k, v in data.get("params", {}).items())
        lines += [f"Measured {data['at'][:16].replace('T', ' ')} UTC; {params}.", ""]
        figure = PLOTS.get(name)
        if figure is not None and figure.exists():
            lines += [f"![{name}]({figure.name})", ""]
        lines += [
            "| metric | candidate | baseline | ratio | spread | rounds | target | met |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for c in data["comparisons"]:
            cand, base = c["candidate"], c["baseline"]
            spread = f"{min(cand['values']):,.4g} to {max(cand['values']):,.4g}"
            target = c["target"]
            higher = c.get("higher_is_better", True)
            target_text = "—" if target is None else ("≥ " if higher else "≤ ") + f"{target}"
            met = c["met"]
            lines.append(
                f"| {c['label']} | {cand['median']:,.4g} {cand['unit']} ({cand['name']}) | "
                f"{base['median']:,.4g} {base['unit']} ({base['name']}) | "
                f"{ratio_text(c['ratio'], target, met)} | "
                f"{spread} | {len(cand['values'])} | {target_text} | "
                f"{'—' if met is None else 'yes' if met else '**no**'} |"
            )
        lines.append("")
        analysis = REPO / "bench" / "results" / f"{name}-analysis.md"
        if analysis.exists():  # hand-written: what bounds a missed target, with profiles
            lines += [results_links(analysis.read_text().strip()), ""]
        notes = REPO / "bench" / "results" / f"{name}.md"
        if notes.exists():
            link = f"[`bench/results/{name}.md`](../bench/results/{name}.md)"
            lines += [f"Details and extra tables: {link}.", ""]
    return "\n".join(lines)


def results_links(markdown: str) -> str:
    """``markdown`` from ``bench/results/`` with its links to sibling files (profiles,
    tables) made relative to ``docs/``, where it is embedded."""
    return re.sub(r"\]\(([\w.-]+)\)", r"](../bench/results/\1)", markdown)


def default_results() -> Path:
    return results_dir()


LATENCY_PLOT = REPO / "docs" / "latency.png"
THROUGHPUT_PLOT = REPO / "docs" / "throughput.png"
SHOP_PLOT = REPO / "docs" / "shop-latency.png"
PLOTS = {"latency": LATENCY_PLOT, "scaling": THROUGHPUT_PLOT, "shop": SHOP_PLOT}


def plot(results: Path) -> list[Path]:
    """The PNGs in ``docs/`` made from ``results`` (matplotlib is a dev dependency)."""
    from bench.plots import latency_plot, shop_plot, throughput_plot  # only full runs plot

    made = [
        latency_plot(results, LATENCY_PLOT),
        throughput_plot(results, THROUGHPUT_PLOT),
        shop_plot(results, SHOP_PLOT),
    ]
    return [m for m in made if m is not None]
