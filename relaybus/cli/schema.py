"""``relaybus asyncapi`` and ``relaybus schema check``: the document of what a
configuration exchanges, and the breaking changes between two such documents."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.table import Table

from relaybus.consumers.asyncapi import SystemNotFound, document, load_systems, render
from relaybus.schema_diff import DocumentError, compare
from relaybus.settings import Settings
from relaybus.terminal import make_console, plain

APP_HELP = (
    "module:attribute of a System or ConsumerApp (or a function returning one); repeat to "
    "combine. Default: the systems installed packages register (the shop's, if installed)."
)


def _current(apps: list[str]) -> dict[str, Any]:
    try:
        system = load_systems(apps)
    except SystemNotFound as err:
        raise typer.BadParameter(str(err), param_hint="--app") from None
    return document(system, Settings())


def asyncapi(
    app: list[str] = typer.Option([], "--app", help=APP_HELP),
    fmt: str = typer.Option("yaml", "--format", help="yaml or json."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write here, not stdout."),
) -> None:
    """Write the AsyncAPI 3.0 document of a configuration: channels (Kafka topics,
    RabbitMQ routing keys and queues), what the relay publishes, what each handler
    receives (group, retry tiers, dead-letter channel), every version of every event
    class. Deterministic: commit it and compare.

    Example: relaybus asyncapi --app myservice.events:system -o docs/asyncapi.yaml
    """
    if fmt not in ("yaml", "json"):
        raise typer.BadParameter(f"{fmt!r}: use yaml or json", param_hint="--format")
    text = render(_current(app), fmt)
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)


schema_app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Event schemas: breaking-change checks."
)


def _read(path: Path, what: str) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as err:
        raise typer.BadParameter(f"cannot read {path}: {err.strerror}", param_hint=what) from None
    try:
        loaded = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (yaml.YAMLError, ValueError) as err:
        raise typer.BadParameter(
            f"{path} is not {'YAML' if path.suffix in ('.yaml', '.yml') else 'JSON'}: "
            f"{str(err).splitlines()[0][:200]}",
            param_hint=what,
        ) from None
    if not isinstance(loaded, dict):
        raise typer.BadParameter(f"{path} is not an AsyncAPI document", param_hint=what)
    return loaded


@schema_app.command("check")
def check(
    against: Path = typer.Option(..., "--against", help="The old document (YAML or JSON)."),
    current: Path | None = typer.Option(
        None, "--current", help="The new document; default: generated from --app now."
    ),
    app: list[str] = typer.Option([], "--app", help=APP_HELP),
    as_json: bool = typer.Option(False, "--json", help="One JSON object, for scripts."),
) -> None:
    """Compare a document with an older one; exit 1 if a change breaks a producer or
    a consumer (field removed or narrowed, required field added, type changed, version
    dropped without an upcaster, channel removed…), 0 if every change is additive.

    Example: relaybus schema check --against docs/asyncapi.yaml
    """
    old = _read(against, "--against")
    new = _read(current, "--current") if current is not None else _current(app)
    try:
        changes = compare(old, new)
    except DocumentError as err:
        raise typer.BadParameter(str(err), param_hint="--against") from None
    breaking = [c for c in changes if c.breaking]
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "breaking": len(breaking),
                    "changes": [
                        {"where": c.where, "what": c.what, "breaking": c.breaking} for c in changes
                    ],
                }
            )
        )
    else:
        console = make_console()
        if changes:
            table = Table("", "where", "change")
            for change in changes:
                table.add_row(
                    "BREAKING" if change.breaking else "additive",
                    plain(change.where),
                    plain(change.what),
                )
            console.print(table)
        console.print(
            f"{len(breaking)} breaking, {len(changes) - len(breaking)} additive change(s)"
        )
    if breaking:
        raise typer.Exit(1)
