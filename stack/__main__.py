"""``python -m stack up|down|status``: the stack without the rest of relaybus."""

from __future__ import annotations

from relaybus.terminal import run_app
from stack.cli import app

if __name__ == "__main__":
    run_app(app, prog="python -m stack")
