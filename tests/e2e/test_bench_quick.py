"""``relaybus bench --quick``: every scenario still runs end to end on the real stack
and writes its results (to a scratch folder, never over ``bench/results``). No
number is asserted: the machines are shared and noisy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.harness import SCENARIOS, which
from tests.support.cli import REPO, run_cli


@pytest.mark.timeout(900)  # every scenario in turn: longer than one test's default
@pytest.mark.slow
@pytest.mark.bench
def test_every_scenario_runs_in_quick_mode(tmp_path: Path) -> None:
    committed = {p.name: p.read_bytes() for p in (REPO / "bench" / "results").glob("*.json")}
    doc = REPO / "docs" / "benchmarks.md"
    doc_before = doc.read_bytes() if doc.exists() else None
    proc = run_cli("bench", "--quick", env={"RELAYBUS_BENCH_RESULTS": str(tmp_path)}, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name, scenario in SCENARIOS.items():
        if scenario.needs and which(scenario.needs) is None:
            assert f"{name}: skipped ({scenario.needs} is not installed)" in proc.stdout
            continue
        data = json.loads((tmp_path / f"{name}.json").read_text())
        assert data["benchmark"] == name
        assert data["comparisons"], name
        for comparison in data["comparisons"]:
            assert comparison["candidate"]["values"], (name, comparison["label"])
    # Real results and the docs page are untouched by a smoke run.
    assert {p.name: p.read_bytes() for p in (REPO / "bench" / "results").glob("*.json")} == (
        committed
    )
    assert (doc.read_bytes() if doc.exists() else None) == doc_before
