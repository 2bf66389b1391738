"""``make chaos``: the fault matrix at full size, its table written into docs/guarantees.md.

Runs against the stack (`relaybus stack up --kafka-nodes 3`): S1 relay SIGKILL x6,
S2 worker SIGKILL x6, S3 duplicate ids x6, S4 Kafka restart x6, S7 PostgreSQL crash
x6, S6 network faults through Toxiproxy x6, S8 hostile records at 1 %, S10 workers
joining and leaving x6 (10 000 messages over 16 keys, a fault every 15 s); S5 a
partition leader of the 3-node cluster frozen, then killed, then the active KRaft
controller killed; S9 a flash sale of 3 000 orders with each saga process killed.
Prints each run's figures, writes them to docs/chaos-matrix.json and the table
between the ``matrix`` markers of docs/guarantees.md; exits 1 if any run broke a
promise.

    .venv/bin/python -m tests.chaos.matrix [--messages N] [--faults N] [--every S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from relaybus.db import create_engine
from relaybus.settings import Settings
from relaybus.stack.kafka_broker import KafkaCluster
from relaybus.stack.settings import StackSettings
from tests.chaos.leader_fault import leader_fault
from tests.chaos.saga_fault import saga_faults, saga_shop
from tests.chaos.scenarios import FAULTS, run
from tests.support.shop import running_shop

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "guarantees.md"
RESULTS = REPO / "docs" / "chaos-matrix.json"
BEGIN, END = "<!-- matrix:begin -->", "<!-- matrix:end -->"
KINDS = {
    "S1": "relay SIGKILL",
    "S2": "worker SIGKILL",
    "S3": "5 applied ids written 3x at once by kcat",
    "S4": "Kafka stopped 3 s and restarted",
    "S6": "Toxiproxy: relay-Kafka cut / latency / reset / 32 KB/s, worker-PostgreSQL cut / dropped",
    "S7": "PostgreSQL crash (immediate stop) and restart, or frozen 5 s, alternately",
    "S8": "hostile records (kcat, 1 % of traffic)",
    "S10": "a worker joins / leaves",
}


async def matrix(
    messages: int, faults: int, every: float, saga_orders: int
) -> list[dict[str, Any]]:
    settings = Settings()
    engine = create_engine(settings.database_url)
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="relaybus-chaos-") as tmp:
            for scenario, fault in FAULTS.items():
                result = await run(
                    scenario,
                    settings,
                    engine,
                    Path(tmp),
                    fault,
                    messages=messages,
                    faults=faults,
                    fault_every=every,
                )
                rows.append({"scenario": scenario, "ok": result.report.ok, **result.figures})
                print(scenario, json.dumps(rows[-1]), flush=True)
            cluster = KafkaCluster.three_nodes(StackSettings())
            for kill, controller in ((False, False), (True, False), (True, True)):
                s5 = await leader_fault(
                    cluster, engine, Path(tmp), kill=kill, controller=controller
                )
                rows.append({"scenario": "S5", "ok": s5.report.ok, **s5.figures})
                print("S5", json.dumps(rows[-1]), flush=True)
            shop = saga_shop()
            with running_shop(Path(tmp) / "s9", shop) as processes:
                report, figures = await saga_faults(settings, shop, processes, saga_orders)
            rows.append({"scenario": "S9", "ok": report.ok, **figures})
            print("S9", json.dumps(rows[-1]), flush=True)
    finally:
        await engine.dispose()
    return rows


def _recovery(row: dict[str, Any]) -> str:
    controller = (
        f"new controller {row['new controller after fault (s)']:g} s after the fault; "
        if "new controller after fault (s)" in row
        else ""
    )
    if "faults" in row:
        pauses = [f["longest key pause, applied (s)"] for f in row["faults"]]
        return "longest key pause per fault (s): " + ", ".join(f"{p:g}" for p in pauses)
    resumed = ", ".join(f"{s:g}" for s in row["affected resumed after election (s)"].values())
    return controller + (
        f"election {row['election after fault (s)']:g} s after the fault; affected "
        f"partitions resumed {resumed} s after it; unaffected partitions "
        f"{row['unaffected until election (x before)']:g}x before the election (acks=all "
        f"waits for the lost follower until it is fenced), "
        f"{row['unaffected after election (x before)']:g}x after; stall shown: "
        f"{row['stall shown']}"
    )


def _saga_row(r: dict[str, Any]) -> str:
    """S9 is checked by the shop's own invariants, not the keyed history: its row
    gives those (stock, final orders, charges) where the others give the history's."""
    statuses = r["statuses"]
    final = statuses.get("CONFIRMED", 0) + statuses.get("CANCELLED", 0)
    stuck = r["orders"] - final
    return (
        f"| S9{'' if r['ok'] else ' **FAILED**'} | each saga process SIGKILLed in turn, "
        f"the gateway frozen 5 s ({', '.join(r['killed (in saga order)'])}), the gateway "
        "declining 20 % and timing out "
        f"5 % | {r['orders']} orders | - | - | - | - | - | {r['dead letters']} | - | - | - "
        f"| stock conserved: {r['stock conserved']}; sagas stuck: {stuck}; "
        f"{statuses.get('CONFIRMED', 0)} confirmed, {statuses.get('CANCELLED', 0)} cancelled "
        f"({', '.join(f'{k} {v}' for k, v in r['cancelled by reason'].items())}); charges "
        f"{r['charges']}; problems: {len(r['problems'])} |"
    )


def table(rows: list[dict[str, Any]], when: str) -> str:
    head = (
        "| scenario | fault | messages | lost | not published | duplicate effects | "
        "order violations | left in outbox | unexpected dead letters | poison not dead-lettered "
        "| duplicates published "
        "| max backlog | recovery |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    )
    lines = []
    for r in rows:
        if r["scenario"] == "S9":
            lines.append(_saga_row(r))
            continue
        fault = f"{KINDS[r['scenario']]} x{len(r['faults'])}" if "faults" in r else r["fault"]
        lines.append(
            f"| {r['scenario']}{'' if r['ok'] else ' **FAILED**'} | {fault} | {r['messages']} "
            f"| {r['lost']} | {r['not published']} | {r['duplicate effects']} "
            f"| {r['order violations']} | {r['left in outbox']} "
            f"| {r['dead-lettered, not poison']} | {r['poison not dead-lettered']} "
            f"| {r['duplicates published']} "
            f"| {r.get('max backlog', '-')} | {_recovery(r)} |"
        )
    return f"Last full run: {when} (`make chaos`).\n\n" + head + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the fault matrix; update docs/guarantees.md.")
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--faults", type=int, default=6)
    parser.add_argument("--every", type=float, default=15.0)
    parser.add_argument("--orders", type=int, default=3000, help="S9's flash-sale orders")
    args = parser.parse_args()
    rows = asyncio.run(matrix(args.messages, args.faults, args.every, args.orders))
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    RESULTS.write_text(json.dumps({"when": when, "runs": rows}, indent=2) + "\n")
    doc = DOC.read_text()
    before, rest = doc.split(BEGIN, 1)
    _, after = rest.split(END, 1)
    DOC.write_text(f"{before}{BEGIN}\n{table(rows, when)}{END}{after}")
    print(f"wrote {DOC.relative_to(REPO)} and {RESULTS.relative_to(REPO)}")
    sys.exit(0 if all(r["ok"] for r in rows) else 1)


if __name__ == "__main__":
    main()
