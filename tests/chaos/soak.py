"""``make soak`` (not in CI): 10 minutes at 70 % of the measured maximum rate, a relay
or a worker SIGKILLed every minute (S1/S2 alternately), the backlog and each
process's RSS and open file descriptors sampled every 5 s; growth reported, the
history checked like any matrix run.

    .venv/bin/python -m tests.chaos.soak [--minutes 10] [--share 0.7]

The maximum rate is measured first, in the same run: 5 000 events written as fast as
one writer can, through the same two relays and two workers, divided by the time
until the last is applied.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from relaybus.db import create_engine
from relaybus.settings import Settings
from tests.chaos.scenarios import Run, kill_relay, kill_worker, run

SAMPLE_EVERY = 5.0


def _proc_figures(pid: int) -> tuple[int, int] | None:
    """(RSS in KiB, open file descriptors) of ``pid``, None if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return rss, fds


class Sampler:
    """Samples every relay's and worker's RSS and FDs; one series per process
    instance (a restarted process is a new instance)."""

    def __init__(self) -> None:
        self.series: dict[str, list[tuple[float, int, int]]] = {}

    async def __call__(self, r: Run) -> None:
        while True:
            now = time.time()
            for proc in [*r.relays, *r.workers]:
                if proc.proc is None:
                    continue
                figures = _proc_figures(proc.proc.pid)
                if figures is not None:
                    key = f"{proc.name} (pid {proc.proc.pid})"
                    self.series.setdefault(key, []).append((now, *figures))
            await asyncio.sleep(SAMPLE_EVERY)  # a sampling period

    def growth(self) -> dict[str, dict[str, Any]]:
        """Per instance that lived over a minute: RSS and FDs at its first and last
        sample after its first minute (start-up allocations excluded)."""
        out = {}
        for key, samples in self.series.items():
            settled = [s for s in samples if s[0] - samples[0][0] >= 60]
            if len(settled) < 2:
                continue
            first, last = settled[0], settled[-1]
            out[key] = {
                "minutes": round((last[0] - first[0]) / 60, 1),
                "rss MiB": [round(first[1] / 1024, 1), round(last[1] / 1024, 1)],
                "fds": [first[2], last[2]],
            }
        return out


async def soak(minutes: float, share: float) -> dict[str, Any]:
    settings = Settings()
    engine = create_engine(settings.database_url)
    try:
        with tempfile.TemporaryDirectory(prefix="relaybus-soak-") as tmp:

            async def no_fault(r: Run, i: int) -> dict[str, Any]:
                return {}

            burst = await run(
                "max",
                settings,
                engine,
                Path(tmp),
                no_fault,
                messages=5000,
                faults=0,
                fault_every=0.001,
            )
            max_rate = burst.figures["messages"] / burst.figures["seconds"]
            rate = share * max_rate
            faults = max(1, int(minutes))
            every = minutes * 60 / (faults + 1)

            async def alternate(r: Run, i: int) -> dict[str, Any]:
                return await (kill_relay if i % 2 == 0 else kill_worker)(r, i)

            sampler = Sampler()
            result = await run(
                "soak",
                settings,
                engine,
                Path(tmp),
                alternate,
                messages=int(rate * minutes * 60),
                faults=faults,
                fault_every=every,
                observe=sampler,
            )
    finally:
        await engine.dispose()
    return {
        "ok": result.report.ok,
        "max rate (events/s, write to applied)": round(max_rate),
        "soak rate (events/s)": round(rate),
        **{k: v for k, v in result.figures.items() if k != "faults"},
        "faults": [f["fault"] for f in result.figures["faults"]],
        "growth per process": sampler.growth(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Soak: steady load with faults, growth sampled.")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--share", type=float, default=0.7, help="of the measured max rate")
    args = parser.parse_args()
    figures = asyncio.run(soak(args.minutes, args.share))
    print(json.dumps(figures, indent=2))
    sys.exit(0 if figures["ok"] else 1)


if __name__ == "__main__":
    main()
