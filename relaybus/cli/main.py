"""Composition of the ``relaybus`` command: sub-commands are registered here only.

Each sub-command's module is imported only when that command runs (or when the
top-level help lists them all): importing every one of them (the console's web app,
the brokers' clients, Alembic, …) took seconds, paid by every process the CLI starts
(relays, workers, shop processes) and by every short command.
"""

from __future__ import annotations

import importlib
from typing import Any

import typer
from typer.core import TyperGroup

from relaybus.terminal import run_app

# name -> (module, attribute): a Typer app (a command group) or a command function.
COMMANDS: dict[str, tuple[str, str]] = {
    "stack": ("stack.cli", "app"),
    "db": ("relaybus.cli.db", "app"),
    "outbox": ("relaybus.cli.outbox", "app"),
    "demo": ("relaybus.cli.demo", "demo"),
    "relay-demo": ("relaybus.cli.relay_demo", "relay_demo"),
    "run": ("relaybus.cli.run", "run"),
    "serve": ("relaybus.cli.serve", "serve"),
    "stream": ("relaybus.cli.stream", "stream"),
    "publish": ("relaybus.cli.publish", "publish"),
    "relay": ("relaybus.cli.relay", "relay"),
    "worker": ("relaybus.cli.worker", "worker"),
    "dlq": ("relaybus.cli.dlq", "app"),
    "shards": ("relaybus.cli.shards", "app"),
    "keys": ("relaybus.cli.keys", "app"),
    "lag": ("relaybus.cli.lag", "lag"),
    "replay": ("relaybus.cli.replay", "replay"),
    "console": ("relaybus.cli.console", "console"),
    "bench": ("relaybus.cli.bench", "bench"),
}


def load_command(name: str) -> Any:
    """The click command of sub-command ``name`` (importing its module now); typed
    ``Any`` because Typer vendors its own click."""
    module, attribute = COMMANDS[name]
    target: Any = getattr(importlib.import_module(module), attribute)
    if isinstance(target, typer.Typer):
        command: Any = typer.main.get_group(target)
    else:
        single = typer.Typer(add_completion=False)
        single.command(name=name)(target)
        command = typer.main.get_command(single)
    command.name = name
    return command


class LazyCommands(TyperGroup):
    """The sub-commands of ``COMMANDS``, each loaded when asked for."""

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        return load_command(cmd_name) if cmd_name in COMMANDS else None


app = typer.Typer(
    cls=LazyCommands,
    help="relaybus: transactional outbox, relay to Kafka/RabbitMQ, idempotent consumers.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """relaybus: transactional outbox, relay to Kafka/RabbitMQ, idempotent consumers."""


def main() -> None:
    """Entry point of the ``relaybus`` console script."""
    run_app(app, prog="relaybus")
