"""``relaybus trace ID``: one message's or one order's story, read from Jaeger."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from typing import Any

import typer
from rich.table import Table

from relaybus.settings import Settings
from relaybus.terminal import make_console, plain
from relaybus.tracing.jaeger_query import JaegerQuery, TraceStoreError, TraceView


def _ms(us: int) -> str:
    return f"{us / 1000:.1f}"


def trace_url() -> str:
    """Jaeger's query API from the settings, or a usage error saying how to set it."""
    url = Settings().tracing_jaeger_url
    if not url:
        typer.echo(
            "relaybus trace: no trace store configured: set RELAYBUS_TRACING_JAEGER_URL "
            "(`relaybus stack up --tracing` starts Jaeger and prints it)",
            err=True,
        )
        raise typer.Exit(2)
    return url


async def stories(query: JaegerQuery, ident: str) -> list[TraceView]:
    """The traces ``ident`` names: a trace id itself, else those holding a span of that
    message id or order id (a replay's trace and its original's), newest first."""
    if len(ident) == 32 and all(c in "0123456789abcdef" for c in ident):
        found = await query.trace(ident)
        if found is not None:
            return [found]
    views = [await query.trace(trace_id) for trace_id in await query.find(ident)]
    return [v for v in views if v is not None]


def trace(
    ident: str = typer.Argument(..., help="A message id, an order id or a trace id."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Print the trace(s) of a message or an order: each span with its service, when it
    began, how long it waited after its parent and how long it worked, its outcome
    (applied, duplicate, retry, dead letter), and links to replayed originals.

    Example: relaybus trace 7251436410892288001
    """
    ident = ident.strip()
    if not ident or len(ident) > 64 or not ident.replace("-", "").isalnum():
        typer.echo("relaybus trace: give a message id (UUID), an order id or a trace id", err=True)
        raise typer.Exit(2)
    query = JaegerQuery(trace_url())
    try:
        views = asyncio.run(stories(query, ident))
    except TraceStoreError as err:
        typer.echo(f"relaybus trace: {err}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps([_as_json(v) for v in views], indent=2))
    else:
        _print(ident, views)
    if not views:
        raise typer.Exit(1)


def _as_json(view: TraceView) -> dict[str, Any]:
    return {"trace_id": view.trace_id, "link": view.link, "spans": [asdict(s) for s in view.spans]}


def _print(ident: str, views: list[TraceView]) -> None:
    console = make_console()
    if not views:
        console.print(plain(f"no trace holds {ident} (is tracing on? OTEL_* in docs/tracing.md)"))
        return
    for view in views:
        table = Table(title=plain(f"trace {view.trace_id}  ({_ms(view.duration_us)} ms)"))
        for column in ("span", "service", "at ms", "wait ms", "work ms", "facts"):
            table.add_column(column, overflow="fold")
        for span in view.spans:
            facts = " ".join(f"{k}={v}" for k, v in view.facts(span))
            facts += "".join(f" link→{link.trace_id[:12]}…" for link in span.links)
            table.add_row(
                plain("  " * span.depth + ("✗ " if span.failed else "") + span.name),
                plain(span.service),
                _ms(span.start_us),
                _ms(span.wait_us),
                _ms(span.duration_us),
                plain(facts),
            )
        console.print(table)
        console.print(plain(f"Jaeger: {view.link}"))
