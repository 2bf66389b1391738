"""Snowflake ids are unique across 4 processes x 100k ids (worker ids leased)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from relaybus.snowflake import parse
from tests.support.cli import REPO


def test_four_processes_never_share_an_id(tmp_path: Path) -> None:
    procs, outs, readies = [], [], []
    go = tmp_path / "go"
    for i in range(4):
        out, ready = tmp_path / f"ids-{i}", tmp_path / f"ready-{i}"
        outs.append(out)
        readies.append(ready)
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.support.snowflake_worker",
                    "100000",
                    str(out),
                    str(ready),
                    str(go),
                ],
                cwd=REPO,
            )
        )
    deadline = time.monotonic() + 60
    while not all(r.exists() for r in readies):
        assert time.monotonic() < deadline, "workers did not lease their ids in time"
        assert all(p.poll() is None for p in procs), "a worker died"
        time.sleep(0.05)
    go.write_text("go")
    for p in procs:
        assert p.wait(timeout=120) == 0
    ids = [int(x) for out in outs for x in out.read_text().split()]
    assert len(ids) == 400_000
    assert len(set(ids)) == 400_000
    workers = {parse(int(out.read_text().split()[0]))[1] for out in outs}
    assert len(workers) == 4  # four distinct leased worker ids
