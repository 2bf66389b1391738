"""Plots for ``docs/``: end-to-end latency percentiles against load (from
``latency.json``). PNG via matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after use(): the backend is chosen first

PERCENTILES = ("p50", "p99", "p99.9")


def latency_plot(results: Path, out: Path) -> Path | None:
    """``out``: per broker, p50/p99/p99.9 (log scale) vs load for relaybus and the raw
    pair; None when there is no latency result to plot."""
    source = results / "latency.json"
    if not source.exists():
        return None
    rows = json.loads(source.read_text()).get("percentiles", [])
    brokers = sorted({r["broker"] for r in rows})
    if not brokers:
        return None
    fig, axes = plt.subplots(1, len(brokers), figsize=(6 * len(brokers), 4.2), squeeze=False)
    for ax, broker in zip(axes[0], brokers, strict=True):
        for variant, style in (("relaybus", "-"), ("raw pair", ":")):
            points = sorted(
                (r for r in rows if r["broker"] == broker and r["variant"] == variant),
                key=lambda r: r["load"],
            )
            if not points:
                continue
            loads = [100 * r["load"] for r in points]
            for q, marker in zip(PERCENTILES, ("o", "s", "^"), strict=True):
                ax.plot(loads, [r[q] for r in points], style, marker=marker,
                        label=f"{variant} {q}")  # fmt: skip
        ax.set_yscale("log")
        ax.set_xlabel("load, % of the measured maximum rate")
        ax.set_ylabel("commit → handler applied, ms")
        ax.set_title(f"{broker}: end-to-end latency (open loop)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
