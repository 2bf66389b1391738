"""``make test``: every test, in phases, against the real services.

A phase is one or more pytest runs side by side; they may share a phase only when
they cannot disturb each other:

1. **services** — ``tests/integration`` then ``tests/e2e``: nothing here stops a
   service. (Side by side, each in a database of its own, they took longer than one
   after the other on a 2-core machine: the CPU, not waiting, bounds them.)
2. **faults** — ``tests/chaos`` without the cluster tests: they stop, freeze and
   restart the shared services, so they run alone.
3. **cluster** — ``relaybus stack up --kafka-nodes 3`` (started here, only for this
   phase), the ``kafka3`` tests, next to ``tests/unit`` (no service; CPU-bound, while
   the cluster tests mostly wait for elections).

Prints each run's output with its name, then a table of the phases' wall times.
Exit status: 0 only if every run passed. Extra arguments go to every pytest run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@dataclass
class Run:
    """One pytest process of a phase."""

    name: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    code: int | None = None


@dataclass
class Phase:
    name: str
    runs: list[Run]
    before: list[list[str]] = field(default_factory=list)
    seconds: float = 0.0


PHASES = [
    Phase(
        "services",
        [Run("integration+e2e", ["tests/integration", "tests/e2e", "-m", "not kafka3"])],
    ),
    Phase("faults", [Run("chaos", ["tests/chaos", "-m", "not kafka3"])]),
    Phase(
        "cluster",
        [Run("kafka3", ["tests", "-m", "kafka3"]), Run("unit", ["tests/unit"])],
        before=[[str(BIN / "relaybus"), "stack", "up", "--kafka-nodes", "3"]],
    ),
]


def _pump(run: Run, proc: subprocess.Popen[str], lock: threading.Lock, begun: float) -> None:
    """Relay the run's output, named; its wall time ends with its output."""
    assert proc.stdout is not None
    for line in proc.stdout:
        with lock:
            sys.stdout.write(f"[{run.name}] {line}")
            sys.stdout.flush()
    run.seconds = time.monotonic() - begun


def run_phase(phase: Phase, extra: list[str]) -> bool:
    started = time.monotonic()
    for command in phase.before:
        print(f"::: {phase.name}: {' '.join(command)}", flush=True)
        if subprocess.run(command, cwd=REPO, check=False).returncode != 0:
            phase.seconds = time.monotonic() - started
            return False
    lock = threading.Lock()
    procs: list[tuple[Run, subprocess.Popen[str], threading.Thread]] = []
    for run in phase.runs:
        command = [str(BIN / "pytest"), "-p", "no:cacheprovider", *run.args, *extra]
        print(f"::: {phase.name}/{run.name}: {' '.join(command[1:])}", flush=True)
        proc = subprocess.Popen(
            command,
            cwd=REPO,
            env={**os.environ, **run.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        pump = threading.Thread(target=_pump, args=(run, proc, lock, time.monotonic()))
        pump.start()
        procs.append((run, proc, pump))
    for run, proc, pump in procs:
        run.code = proc.wait()
        pump.join()
    phase.seconds = time.monotonic() - started
    # pytest's 5: nothing collected (a marker selecting nothing) is not a failure
    return all(run.code in (0, 5) for run in phase.runs)


def main(extra: list[str]) -> int:
    ok = True
    for phase in PHASES:
        ok = run_phase(phase, extra) and ok
    print("\n::: phases (wall time; runs of a phase are side by side)")
    print(f"{'phase':<10} {'run':<12} {'seconds':>8}  result")
    for phase in PHASES:
        for run in phase.runs:
            result = "-" if run.code is None else "passed" if run.code in (0, 5) else "FAILED"
            print(f"{phase.name:<10} {run.name:<12} {run.seconds:>8.0f}  {result}")
        print(f"{phase.name:<10} {'(phase)':<12} {phase.seconds:>8.0f}")
    print(f"{'total':<23} {sum(p.seconds for p in PHASES):>8.0f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
