"""Composition of the ``relaybus`` command: sub-commands are registered here only."""

from __future__ import annotations

import typer

from relaybus.cli import (
    bench,
    console,
    db,
    demo,
    dlq,
    lag,
    outbox,
    publish,
    relay,
    relay_demo,
    replay,
    run,
    serve,
    shards,
    stream,
    worker,
)
from relaybus.terminal import run_app
from stack.cli import app as stack_app

app = typer.Typer(
    help="relaybus: transactional outbox, relay to Kafka/RabbitMQ, idempotent consumers.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(stack_app, name="stack")
app.add_typer(db.app, name="db")
app.add_typer(outbox.app, name="outbox")
app.command(name="demo")(demo.demo)
app.command(name="relay-demo")(relay_demo.relay_demo)
app.command(name="run")(run.run)
app.command(name="serve")(serve.serve)
app.command(name="stream")(stream.stream)
app.command(name="publish")(publish.publish)
app.command(name="relay")(relay.relay)
app.command(name="worker")(worker.worker)
app.add_typer(dlq.app, name="dlq")
app.add_typer(shards.app, name="shards")
app.command(name="lag")(lag.lag)
app.command(name="replay")(replay.replay)
app.command(name="console")(console.console)
app.command(name="bench")(bench.bench)


def main() -> None:
    """Entry point of the ``relaybus`` console script."""
    run_app(app, prog="relaybus")
