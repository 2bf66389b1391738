"""Rounds, medians and the JSON + markdown result files every benchmark writes."""

from __future__ import annotations

import json
import os
import platform
import statistics
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def results_dir() -> Path:
    """Where results go: ``bench/results``, or ``$RELAYBUS_BENCH_RESULTS`` (the
    harness's ``--quick`` runs write to a scratch folder, never over real results)."""
    return Path(os.environ.get("RELAYBUS_BENCH_RESULTS") or RESULTS)


@dataclass
class Series:
    """Throughputs (per second) of one variant over several rounds."""

    name: str
    unit: str
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)


@dataclass
class Comparison:
    """``candidate`` against ``baseline``: ratio of medians and the target it must reach
    (``None``: reported for information, no target). By default the target is a
    floor on the ratio (throughput); ``higher_is_better=False`` makes it a ceiling
    (latency), and ``target_on="value"`` puts it on the candidate's median itself."""

    label: str
    candidate: Series
    baseline: Series
    target: float | None
    higher_is_better: bool = True
    target_on: str = "ratio"

    @property
    def ratio(self) -> float | None:
        """None when the baseline measured nothing (a quick run below the clock's
        resolution): no ratio, rather than a division by zero."""
        if self.baseline.median == 0:
            return None
        return self.candidate.median / self.baseline.median

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        measured = self.ratio if self.target_on == "ratio" else self.candidate.median
        if measured is None:
            return None
        return measured >= self.target if self.higher_is_better else measured <= self.target


def ratio_text(ratio: float | None, target: float | None, met: bool | None) -> str:
    """A ratio with two decimals, or three where two would contradict ``met`` (0.749
    against a 0.75 floor reads "0.749", not "0.75 ... no")."""
    if ratio is None:
        return "—"
    text = f"{ratio:.2f}"
    if target is not None and met is not None and (float(text) == target) != (ratio == target):
        text = f"{ratio:.3f}"
    return text


def write(name: str, params: dict[str, Any], comparisons: list[Comparison]) -> str:
    """Write ``<results>/<name>.json`` and ``<results>/<name>.md``; return the markdown."""
    folder = results_dir()
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "benchmark": name,
        "at": datetime.now(UTC).isoformat(),
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
        "params": params,
        "comparisons": [
            {
                "label": c.label,
                "candidate": {
                    "name": c.candidate.name,
                    "unit": c.candidate.unit,
                    "values": c.candidate.values,
                    "median": c.candidate.median,
                },
                "baseline": {
                    "name": c.baseline.name,
                    "unit": c.baseline.unit,
                    "values": c.baseline.values,
                    "median": c.baseline.median,
                },
                "ratio": c.ratio,
                "target": c.target,
                "higher_is_better": c.higher_is_better,
                "target_on": c.target_on,
                "met": c.met,
            }
            for c in comparisons
        ],
    }
    (folder / f"{name}.json").write_text(json.dumps(data, indent=2))
    lines = [
        f"# {name}",
        "",
        f"{data['at']} · Python {data['machine']['python']} · "
        f"{data['machine']['cpus']} CPUs · " + ", ".join(f"{k}={v}" for k, v in params.items()),
        "",
        "| comparison | relaybus (median) | baseline (median) | ratio | target | met |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for c in comparisons:
        lines.append(
            f"| {c.label} | {c.candidate.median:,.0f} {c.candidate.unit} "
            f"({c.candidate.name}) | {c.baseline.median:,.0f} {c.baseline.unit} "
            f"({c.baseline.name}) | {ratio_text(c.ratio, c.target, c.met)} | "
            + ("—" if c.target is None else f"{'≥' if c.higher_is_better else '≤'} {c.target}")
            + f" | {'—' if c.met is None else 'yes' if c.met else 'NO'} |"
        )
    lines += ["", "Rounds (each value one round, in the unit above):", ""]
    for c in comparisons:
        for s in (c.candidate, c.baseline):
            lines.append(f"- {c.label} / {s.name}: " + ", ".join(f"{v:,.0f}" for v in s.values))
    md = "\n".join(lines) + "\n"
    (folder / f"{name}.md").write_text(md)
    return md


def amend(name: str, md: str, **extra: Any) -> None:
    """Replace ``<results>/<name>.md`` with ``md`` (what ``write`` returned plus a
    scenario's own tables) and add ``extra`` keys to ``<name>.json``."""
    folder = results_dir()
    (folder / f"{name}.md").write_text(md)
    if extra:
        data = json.loads((folder / f"{name}.json").read_text())
        data.update(extra)
        (folder / f"{name}.json").write_text(json.dumps(data, indent=2))
