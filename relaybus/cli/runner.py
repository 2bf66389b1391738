"""Runs a typer app so that bad input ends in one clear line, never a traceback."""

from __future__ import annotations

import sys
from typing import Any

import typer


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
