"""Running the real console scripts in a subprocess, as a user would."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``relaybus ARGS`` (through the installed entry point) and capture its output."""
    script = Path(sys.executable).parent / "relaybus"
    return subprocess.run(
        [str(script), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=REPO,
        timeout=timeout,
        input=input,
        check=False,
    )


def invoke(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``relaybus ARGS`` in this process, exactly as the console script does
    (``relaybus.cli.main.main``: the same error formatting and exit codes), with
    ``env`` added to the environment for the call: for the fast tier, where starting
    a Python process per command would cost most of the test's time."""
    from relaybus.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_argv = dict(os.environ), sys.argv
    os.environ.update(env or {})
    sys.argv = ["relaybus", *args]
    code: int | str | None = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exit_:
        code = exit_.code
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv = saved_argv
    returncode = code if isinstance(code, int) else (0 if code is None else 1)
    return subprocess.CompletedProcess(
        ["relaybus", *args], returncode, out.getvalue(), err.getvalue()
    )
