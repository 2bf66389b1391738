"""``relaybus stack up|down|status`` (also ``python -m relaybus.stack …``)."""

from __future__ import annotations

import json
from dataclasses import asdict

import typer
from rich.table import Table

from relaybus.stack.errors import StackError
from relaybus.stack.stack import Stack
from relaybus.terminal import make_console

app = typer.Typer(
    help="Start, stop and inspect the real local services (no Docker needed).",
    no_args_is_help=True,
    add_completion=False,
)


def _fail(err: StackError) -> typer.Exit:
    console = make_console(stderr=True)
    console.print(f"[red]stack: {err}[/red]", highlight=False)
    if err.detail:
        console.print(err.detail, highlight=False, markup=False)
    return typer.Exit(1)


@app.command()
def up(
    kafka_nodes: int = typer.Option(
        1, "--kafka-nodes", help="1 = the single broker only; 3 = also a 3-node KRaft cluster."
    ),
    install: bool = typer.Option(True, help="apt-get install missing Debian packages."),
    debezium: bool = typer.Option(
        False,
        "--debezium",
        help="Also run Kafka Connect with Debezium's PostgreSQL connector on the outbox "
        "(after `relaybus db upgrade`; docs/cdc.md).",
    ),
    tracing: bool = typer.Option(
        False,
        "--tracing",
        help="Also build (once, minutes) and run Jaeger: OTLP in, query API and UI out "
        "(docs/tracing.md).",
    ),
) -> None:
    """Install what is missing and start every service; harmless if already up.

    Example: relaybus stack up --kafka-nodes 3
    """
    stack = Stack()
    try:
        installed = stack.up(
            kafka_nodes=kafka_nodes, install=install, debezium=debezium, tracing=tracing
        )
    except StackError as err:
        raise _fail(err) from None
    if installed:
        typer.echo(f"installed: {', '.join(installed)}")
    _print_table(stack)
    if tracing:
        typer.echo(
            "traces: export OTEL_EXPORTER_OTLP_ENDPOINT="
            f"{stack.jaeger.otlp_endpoint} RELAYBUS_TRACING_JAEGER_URL={stack.jaeger.query_url}"
        )


@app.command()
def down() -> None:
    """Stop every service this stack started (by pid); harmless if already down.

    Example: relaybus stack down
    """
    try:
        stopped = Stack().down()
    except StackError as err:
        raise _fail(err) from None
    typer.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Report each service, whether it runs, its endpoint and pid.

    Example: relaybus stack status --json
    """
    stack = Stack()
    if as_json:
        typer.echo(json.dumps([asdict(r) for r in stack.status()], indent=2))
    else:
        _print_table(stack)


def _print_table(stack: Stack) -> None:
    table = Table(title="relaybus stack")
    for col in ("service", "state", "endpoint", "pid", "detail"):
        table.add_column(col)
    for row in stack.status():
        state = "[green]up[/green]" if row.running else "[red]down[/red]"
        table.add_row(row.name, state, row.endpoint, str(row.pid or "-"), row.detail)
    make_console().print(table)
