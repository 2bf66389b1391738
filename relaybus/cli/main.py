"""Composition of the ``relaybus`` command: the library's sub-commands are listed
here; an application adds its own through the ``relaybus.commands`` entry point group
(the shop registers ``demo``, ``run``, ``serve``, … that way, as any user can).

Each sub-command's module is imported only when that command runs (or when the
top-level help lists them all): importing every one of them (the console's web app,
the brokers' clients, Alembic, …) took seconds, paid by every process the CLI starts
(relays, workers, shop processes) and by every short command.
"""

from __future__ import annotations

import importlib
from functools import cache
from importlib.metadata import entry_points
from typing import Any

import typer
from typer.core import TyperGroup

from relaybus import tracing
from relaybus.terminal import run_app

# name -> (module, attribute): a Typer app (a command group) or a command function.
COMMANDS: dict[str, tuple[str, str]] = {
    "stack": ("relaybus.stack.cli", "app"),
    "db": ("relaybus.cli.db", "app"),
    "outbox": ("relaybus.cli.outbox", "app"),
    "relay-demo": ("relaybus.cli.relay_demo", "relay_demo"),
    "publish": ("relaybus.cli.publish", "publish"),
    "relay": ("relaybus.cli.relay", "relay"),
    "worker": ("relaybus.cli.worker", "worker"),
    "dlq": ("relaybus.cli.dlq", "app"),
    "lag": ("relaybus.cli.lag", "lag"),
    "replay": ("relaybus.cli.replay", "replay"),
    "console": ("relaybus.cli.console", "console"),
    "bench": ("relaybus.cli.bench", "bench"),
    "asyncapi": ("relaybus.cli.schema", "asyncapi"),
    "schema": ("relaybus.cli.schema", "schema_app"),
    "trace": ("relaybus.cli.trace", "trace"),
}


ENTRY_POINTS = "relaybus.commands"


@cache
def registered() -> dict[str, tuple[str, str]]:
    """Every sub-command: the library's, then those installed packages register in the
    ``relaybus.commands`` entry point group (``name = "module:attribute"``); a
    registered name never replaces a library command."""
    commands = dict(COMMANDS)
    for point in entry_points(group=ENTRY_POINTS):
        module, _, attribute = point.value.partition(":")
        commands.setdefault(point.name, (module, attribute))
    return commands


def load_command(name: str) -> Any:
    """The click command of sub-command ``name`` (importing its module now); typed
    ``Any`` because Typer vendors its own click. A command whose optional dependencies
    are not installed becomes one line naming the extra to install."""
    # The library's own commands need no entry point scan (about 0.1 s per process).
    module, attribute = COMMANDS[name] if name in COMMANDS else registered()[name]
    try:
        target: Any = getattr(importlib.import_module(module), attribute)
    except ModuleNotFoundError as err:
        if err.name is None or err.name.split(".")[0] == "relaybus":
            raise
        return _missing(name, err.name, module)
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
        return list(registered())

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        known = cmd_name in COMMANDS or cmd_name in registered()
        return load_command(cmd_name) if known else None


def _missing(name: str, package: str, module: str) -> Any:
    """A stand-in command that says what to install for ``package``."""
    if module.startswith("relaybus.shop."):
        install = "pip install 'relaybus[shop]'"
    elif module.startswith("relaybus.cli.console"):
        install = "pip install 'relaybus[console]'"
    elif module.startswith("relaybus."):
        install = "pip install 'relaybus[streams]'"
    else:
        install = f"install {package}"

    def unavailable(ctx: typer.Context) -> None:
        typer.echo(
            f"relaybus {name}: needs {package}, which is not installed: {install}",
            err=True,
        )
        raise typer.Exit(2)

    single = typer.Typer(add_completion=False)
    anything = {"allow_extra_args": True, "ignore_unknown_options": True}
    single.command(name=name, help=f"(needs {package}: {install})", context_settings=anything)(
        unavailable
    )
    command: Any = typer.main.get_command(single)
    command.name = name
    return command


app = typer.Typer(
    cls=LazyCommands,
    help="relaybus: transactional outbox, relay to Kafka/RabbitMQ, idempotent consumers.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root(ctx: typer.Context) -> None:
    """relaybus: transactional outbox, relay to Kafka/RabbitMQ, idempotent consumers."""
    # The one composition root of every relaybus process: tracing from the standard
    # OTEL_* variables (docs/tracing.md), named after the command unless
    # OTEL_SERVICE_NAME says otherwise.
    tracing.configure(f"relaybus-{ctx.invoked_subcommand or 'cli'}")


def main() -> None:
    """Entry point of the ``relaybus`` console script."""
    run_app(app, prog="relaybus")
