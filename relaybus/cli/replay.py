"""``relaybus replay TOPIC --since T [--until T] --dry-run``: a topic's records in a
time window, per partition."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from datetime import UTC, datetime

import typer
from rich.table import Table

from relaybus.brokers.kafka_admin import PartitionWindow, time_window
from relaybus.cli.timespec import parse_instant
from relaybus.settings import Settings
from relaybus.terminal import make_console, plain


def replay(
    topic: str = typer.Argument(..., help="The Kafka topic to replay."),
    since: str = typer.Option(..., "--since", help="Start of the window (ISO-8601 or 15m, 2h…)."),
    until: str = typer.Option(None, "--until", help="End of the window, exclusive (default: now)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only show the window; change nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Find the records of TOPIC whose timestamps fall in [--since, --until), per
    partition (the broker's time index: ``offsets_for_times``). With --dry-run, print
    each partition's offset range, its count and its first and last timestamps, and
    change nothing.

    Only --dry-run is available so far: resetting a group (--group) and copying the
    window to another topic (--to-topic) are not built yet.

    Example: relaybus replay shop.order.admitted --since 2h --until 1h --dry-run
    """
    now = datetime.now(UTC)
    start = parse_instant(since, now, "--since")
    end = parse_instant(until, now, "--until") if until is not None else None
    if end is not None and end <= start:
        raise typer.BadParameter("must be later than --since", param_hint="--until")
    if not dry_run:
        raise typer.BadParameter(
            "only --dry-run is available so far (--group and --to-topic are not built yet)",
            param_hint="--dry-run",
        )
    try:
        windows = asyncio.run(
            time_window(
                Settings().kafka_bootstrap,
                topic,
                _ms(start),
                _ms(end) if end is not None else None,
            )
        )
    except LookupError as err:
        make_console(stderr=True).print(plain(f"relaybus replay: {err}"))
        raise typer.Exit(2) from None
    except OSError as err:
        make_console(stderr=True).print(plain(f"relaybus replay: Kafka unreachable: {err}"))
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps([{**asdict(w), "count": w.count} for w in windows], indent=2))
        return
    _print(topic, windows)


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def _time(ms: int | None) -> str:
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def _print(topic: str, windows: list[PartitionWindow]) -> None:
    table = Table(title=f"{topic}: records in the window (dry run: nothing changed)")
    for column in ("partition", "start", "end", "count", "first", "last"):
        table.add_column(column, justify="right" if column not in ("first", "last") else "left")
    for w in windows:
        table.add_row(
            str(w.partition),
            str(w.start),
            str(w.end),
            str(w.count),
            _time(w.first_timestamp),
            _time(w.last_timestamp),
        )
    table.add_row("all", "", "", str(sum(w.count for w in windows)), "", "")
    make_console().print(table)
