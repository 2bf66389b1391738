"""Terminal output for the command lines (relaybus's and the stack's): one clear line
for bad input, never a traceback, and values from the wire or the database printed
as text, never as Rich markup or terminal escapes."""

from __future__ import annotations

import re
import sys
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.text import Text

# C0 and C1 control characters (ESC starts terminal escape sequences) and DEL.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def make_console(*, stderr: bool = False) -> Console:
    """A console that wraps at the terminal width, or at 160 columns when not a terminal."""
    console = Console(stderr=stderr)
    if not console.is_terminal:
        console = Console(stderr=stderr, width=160)
    return console


def safe_text(value: object) -> str:
    """``value`` as a string with control characters shown as escapes (``\\x1b``)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))


def plain(value: object) -> Text:
    """``value`` for a Rich table cell or ``print``: literal text, never markup
    (``[link=…]`` and ``[/x]`` print as they are) and never terminal escapes."""
    return Text(safe_text(value))


def settings_problem(err: ValidationError) -> str:
    """What is wrong with the settings, one line, naming the environment variables;
    never the values (one may be a secret)."""
    problems = []
    for e in err.errors():
        field = "_".join(str(part) for part in e["loc"])
        where = f"RELAYBUS_{field.upper()}: " if field else ""
        problems.append(f"{where}{e['msg'].removeprefix('Value error, ')}")
    return "invalid settings: " + "; ".join(problems)


def _mro_names(err: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(err).__mro__}


def run_app(app: typer.Typer, prog: str) -> None:
    """Run ``app``; usage errors print ``<prog>: error: …`` plus a hint and exit 2.

    Typer vendors its own copy of click in recent releases, so its exception classes
    are recognised by name (ClickException / UsageError) rather than imported.
    """
    command = typer.main.get_command(app)
    try:
        code = command.main(prog_name=prog, standalone_mode=False)
    except ValidationError as err:
        if not err.title.endswith("Settings"):
            raise
        print(f"{prog}: error: {settings_problem(err)}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as err:
        sys.exit(err.exit_code)
    except typer.Abort:
        print(f"{prog}: aborted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        names = _mro_names(err)
        if "ClickException" not in names:
            raise
        ctx: Any = getattr(err, "ctx", None)
        if "NoArgsIsHelpError" in names:
            sys.exit(2)  # typer has printed the help already
        where = ctx.command_path if ctx is not None else prog
        message = err.format_message()  # type: ignore[attr-defined]
        print(f"{prog}: error: {message} (see '{where} --help')", file=sys.stderr)
        sys.exit(getattr(err, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)
