"""Rich consoles for CLI output: wide enough for tables even when piped to a file."""

from __future__ import annotations

from rich.console import Console


def make_console(*, stderr: bool = False) -> Console:
    """A console that wraps at the terminal width, or at 160 columns when not a terminal."""
    console = Console(stderr=stderr)
    if not console.is_terminal:
        console = Console(stderr=stderr, width=160)
    return console
