"""``relaybus bench [SCENARIO…] [--quick] [--rounds N]``: the benchmarks, one harness."""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import typer

from relaybus.terminal import make_console, plain

CHECKOUT = Path(__file__).resolve().parents[2]  # relaybus/cli/bench.py -> the checkout


def _harness() -> ModuleType:
    """``bench.harness`` from the source checkout this relaybus runs from (the
    benchmarks are not part of the installed package)."""
    if not (CHECKOUT / "bench" / "harness.py").exists():
        make_console(stderr=True).print("relaybus bench: run it from a source checkout of relaybus")
        raise typer.Exit(2)
    if str(CHECKOUT) not in sys.path:
        sys.path.insert(0, str(CHECKOUT))
    return importlib.import_module("bench.harness")


def bench(
    scenarios: list[str] = typer.Argument(None, help="Scenarios to run (default: all)."),
    quick: bool = typer.Option(
        False, "--quick", help="Smoke mode: tiny workloads, results to a scratch folder."
    ),
    rounds: int = typer.Option(None, "--rounds", min=1, help="Rounds per comparison."),
) -> None:
    """Run benchmark scenarios on the running stack, each against baselines measured
    in the same run (rounds interleaved), write bench/results/<scenario>.json and
    regenerate docs/benchmarks.md. --quick checks that every scenario still runs:
    its numbers go to a temporary folder and the docs are left alone.

    Example: relaybus bench latency --rounds 3
    """
    harness = _harness()
    known = harness.SCENARIOS
    unknown = [s for s in scenarios or [] if s not in known]
    if unknown:
        raise typer.BadParameter(
            f"unknown scenario {', '.join(unknown)}: use {', '.join(known)}", param_hint="SCENARIO"
        )
    console = make_console()
    results = None
    if quick:  # never over real results: $RELAYBUS_BENCH_RESULTS or a scratch folder
        scratch = os.environ.get("RELAYBUS_BENCH_RESULTS")
        results = Path(scratch) if scratch else Path(tempfile.mkdtemp(prefix="relaybus-bench-"))
    failed = []
    for name in scenarios or list(known):
        scenario = known[name]
        if scenario.needs and harness.which(scenario.needs) is None:
            console.print(plain(f"{name}: skipped ({scenario.needs} is not installed)"))
            continue
        console.rule(plain(f"{name}: {scenario.summary}"))
        code = harness.run(scenario, quick, rounds, results or harness.default_results())
        if code != 0:
            failed.append(name)
    if not quick:
        command_line = " ".join(["relaybus bench", *(scenarios or []),
                                 *(["--rounds", str(rounds)] if rounds else [])])  # fmt: skip
        harness.DOC.write_text(harness.render(harness.default_results(), command_line))
        console.print(plain(f"wrote {harness.DOC.relative_to(CHECKOUT)}"))
        for plot in harness.plot(harness.default_results()):
            console.print(plain(f"wrote {plot.relative_to(CHECKOUT)}"))
    if failed:
        make_console(stderr=True).print(plain(f"relaybus bench: failed: {', '.join(failed)}"))
        raise typer.Exit(1)
