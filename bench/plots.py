"""Plots for ``docs/``: end-to-end latency percentiles against load (from
``latency.json``), and throughput against processes (from the ``cells`` of
``scaling.json``, ``consumer.json`` and ``writes.json``). PNG via matplotlib's Agg
backend (no display needed)."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import matplotlib
import matplotlib.ticker

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


def _median_by(cells: list[dict[str, float]], key: str, value: str) -> dict[float, float]:
    """Median of ``value`` per distinct ``key`` over ``cells`` (one cell per round)."""
    grouped: dict[float, list[float]] = {}
    for cell in cells:
        grouped.setdefault(cell[key], []).append(cell[value])
    return {k: statistics.median(v) for k, v in sorted(grouped.items())}


def throughput_plot(results: Path, out: Path) -> Path | None:
    """``out``: throughput against processes or connections: relays (per partition
    count), consumer workers in one group, and outbox writers with and without the
    event. None when none of those results exists."""
    cells = {
        name: json.loads((results / f"{name}.json").read_text()).get("cells", [])
        for name in ("scaling", "consumer", "writes")
        if (results / f"{name}.json").exists()
    }
    if not any(cells.values()):
        return None
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    relay, consumer, writes = axes
    scaling = cells.get("scaling", [])
    for partitions in sorted({c["partitions"] for c in scaling}):
        rows = [c for c in scaling if c["partitions"] == partitions]
        points = _median_by(rows, "relays", "rate")
        relay.plot(list(points), list(points.values()), marker="o",
                   label=f"{int(partitions)} partitions")  # fmt: skip
    relay.set_title("relay → Kafka: relay processes")
    relay.set_xlabel("relay processes")
    relay.set_ylabel("events/s")
    points = _median_by(cells.get("consumer", []), "workers", "rate")
    if points:
        consumer.plot(list(points), list(points.values()), marker="o", label="inbox consumer")
    consumer.set_title("Kafka → handler + inbox: worker processes, one group")
    consumer.set_xlabel("worker processes")
    consumer.set_ylabel("messages/s")
    for variant, label in (("plain", "INSERT alone"), ("with_event", "INSERT + event")):
        points = _median_by(cells.get("writes", []), "writers", variant)
        if points:
            writes.plot(list(points), list(points.values()), marker="o", label=label)
    writes.set_xscale("log", base=2)
    writes.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    writes.set_title("outbox writes: concurrent writers")
    writes.set_xlabel("writers (connections)")
    writes.set_ylabel("transactions/s")
    relay.set_xticks(sorted({c["relays"] for c in scaling}) or [1])
    consumer.set_xticks(sorted({c["workers"] for c in cells.get("consumer", [])}) or [1])
    writes.set_xticks(sorted({c["writers"] for c in cells.get("writes", [])}) or [1])
    for ax in axes:
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"throughput vs processes ({os.cpu_count()} CPUs: PostgreSQL, Kafka and the "
                 "processes share them)", fontsize=10)  # fmt: skip
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def shop_plot(results: Path, out: Path) -> Path | None:
    """``out``: per shop variant, commit -> final status and ``POST /orders`` p50/p99
    (log scale) against the offered rate, open-loop phases only (overload included);
    None when there is no shop result."""
    source = results / "shop.json"
    if not source.exists():
        return None
    variants = json.loads(source.read_text()).get("phases", {})
    if not variants:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for (variant, phases), style in zip(variants.items(), ("-", "--", ":", "-."), strict=False):
        points = sorted((p for p in phases if p["offered_per_s"]), key=lambda p: p["offered_per_s"])
        rates = [p["offered_per_s"] for p in points]
        for ax, key in zip(axes, ("commit_to_final_ms", "post_ms"), strict=True):
            for q, marker in (("p50", "o"), ("p99", "s")):
                ax.plot(rates, [p[key].get(q, float("nan")) for p in points], style,
                        marker=marker, label=f"{variant} {q}")  # fmt: skip
    axes[0].set_ylabel("commit → final status (admitted orders), ms")
    axes[1].set_ylabel("POST /orders, ms (from when it was due)")
    for ax in axes:
        ax.set_yscale("log")
        ax.set_xlabel("offered orders/s (open loop; the last point is the overload)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
