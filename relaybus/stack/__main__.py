"""``python -m relaybus.stack up|down|status``: the stack without the rest of relaybus."""

from __future__ import annotations

from relaybus.stack.cli import app
from relaybus.terminal import run_app

if __name__ == "__main__":
    run_app(app, prog="python -m relaybus.stack")
