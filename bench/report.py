"""Rounds, medians and the JSON + markdown result files every benchmark writes."""

from __future__ import annotations

import json
import platform
import statistics
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


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
    (``None``: reported for information, no target)."""

    label: str
    candidate: Series
    baseline: Series
    target: float | None

    @property
    def ratio(self) -> float:
        return self.candidate.median / self.baseline.median

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.ratio >= self.target


def write(name: str, params: dict[str, Any], comparisons: list[Comparison]) -> str:
    """Write ``results/<name>.json`` and ``results/<name>.md``; return the markdown."""
    RESULTS.mkdir(parents=True, exist_ok=True)
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
                "met": c.met,
            }
            for c in comparisons
        ],
    }
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2))
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
            f"({c.baseline.name}) | {c.ratio:.2f} | "
            + ("—" if c.target is None else f"≥ {c.target}")
            + f" | {'—' if c.met is None else 'yes' if c.met else 'NO'} |"
        )
    lines += ["", "Rounds (per second):", ""]
    for c in comparisons:
        for s in (c.candidate, c.baseline):
            lines.append(f"- {c.label} / {s.name}: " + ", ".join(f"{v:,.0f}" for v in s.values))
    md = "\n".join(lines) + "\n"
    (RESULTS / f"{name}.md").write_text(md)
    return md
