"""Process helpers: pid files, port probes, polling with a deadline, log tails."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from relaybus.stack.errors import StackError


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def read_pid(pid_file: Path) -> int | None:
    """The pid on the first line of ``pid_file`` if that process is alive, else None."""
    try:
        pid = int(pid_file.read_text().split("\n", 1)[0].strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def pid_alive(pid: int) -> bool:
    """True when ``pid`` names a live (non-zombie) process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # A zombie still answers kill(0); its state letter in /proc says otherwise.
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def wait_until(
    probe: Callable[[], bool], timeout: float, what: str, log: Path | None = None
) -> None:
    """Poll ``probe`` until it is true; raise ``StackError`` naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)
    raise StackError(f"{what}: not ready after {timeout:.0f}s", tail(log) if log else "")


def stop_pid(pid_file: Path, timeout: float = 30.0) -> bool:
    """SIGTERM the process in ``pid_file``, SIGKILL it after ``timeout``; False if none ran."""
    return bool(stop_pids([pid_file], timeout))


def stop_pids(pid_files: Sequence[Path], timeout: float = 30.0) -> list[Path]:
    """SIGTERM every live process named by ``pid_files`` at once, wait up to ``timeout``
    for all of them, SIGKILL stragglers; remove the pid files. Returns those that ran.

    Signalling all first matters for clusters: nodes shut down together instead of one
    waiting on a quorum the others already left.
    """
    running = [(f, pid) for f in pid_files if (pid := read_pid(f)) is not None]
    for _, pid in running:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for _, pid in running:
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            while pid_alive(pid):
                time.sleep(0.05)
    for f in pid_files:
        f.unlink(missing_ok=True)
    return [f for f, _ in running]


def spawn(
    argv: Sequence[str],
    log: Path,
    pid_file: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> int:
    """Start ``argv`` detached (own session), output appended to ``log``; record its pid."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
    pid_file.write_text(str(proc.pid))
    return proc.pid


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and make it private to its owner (0700)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def run(
    argv: Sequence[str],
    what: str,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    cwd: Path | None = None,
) -> str:
    """Run a command to completion; raise ``StackError`` with its output if it fails.

    Secrets go in ``stdin``, never in ``argv`` (other users can read process arguments).
    """
    proc = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        input=stdin,
        env={**os.environ, **(env or {})},
        check=False,
        cwd=cwd,
    )
    if proc.returncode != 0:
        raise StackError(f"{what} failed (exit {proc.returncode})", proc.stdout + proc.stderr)
    return proc.stdout


def tail(log: Path, lines: int = 25) -> str:
    """The last ``lines`` lines of ``log`` (empty if it does not exist)."""
    try:
        content = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(content[-lines:])


def require_free_port(host: str, port: int, service: str) -> None:
    """Raise when ``port`` is taken by something that is not our ``service``."""
    if port_open(host, port):
        raise StackError(
            f"{service}: port {host}:{port} is busy (another process listens there); "
            f"stop it or set RELAYBUS_STACK_* to another port"
        )
