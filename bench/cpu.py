"""CPU seconds of processes from ``/proc`` (utime + stime): what a figure bounded by
the machine's cores spent, per process kind."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
# comm names of the stack's servers (Kafka runs in a JVM, RabbitMQ in Erlang's VM)
SERVERS = {"PostgreSQL": "postgres", "Kafka": "java", "RabbitMQ": "beam.smp"}


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of ``pids`` (processes that ended count 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def server_cpu_seconds(command: str = "postgres") -> float:
    """CPU seconds of a forking server so far, *including its exited children*: every
    live ``command`` process's utime + stime, plus the parent's cutime + cstime (the
    children it has reaped). PostgreSQL runs a backend per connection: a client that
    connects and leaves between two readings (pgbench) is counted too."""
    pids = pids_named(command)
    total = 0
    for pid in pids:
        fields = _stat(pid)
        if fields is None:
            continue
        total += int(fields[11]) + int(fields[12])
        parent = int(fields[1])
        if parent not in pids:  # the postmaster: add the children it reaped
            total += int(fields[13]) + int(fields[14])
    return total / TICKS


def pids_named(command: str) -> list[int]:
    """Processes whose ``comm`` is ``command`` (``postgres``; ``java`` is Kafka here)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == command:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@contextmanager
def cpu_used(into: dict[str, float]) -> Iterator[None]:
    """Fill ``into`` with the CPU seconds this process and each stack server used
    while the block ran."""
    pids = {"this process": [os.getpid()]} | {k: pids_named(v) for k, v in SERVERS.items()}
    before = {k: cpu_seconds(p) for k, p in pids.items()}
    yield
    into.update({k: cpu_seconds(p) - before[k] for k, p in pids.items()})
