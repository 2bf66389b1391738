"""A new team's view of relaybus: the built wheel, fresh virtualenvs, the processes a
README starts in the background, a consumer group that starts where a fresh one would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aiokafka import TopicPartition

from relaybus.brokers.kafka_admin import committed_reader, list_topics, topic_partitions
from relaybus.settings import Settings

REPO = Path(__file__).resolve().parents[2]
UV = Path(sys.executable).parent / "uv"
CONSTRAINTS = REPO / "constraints.txt"
FOREIGN = ("fastapi", "faust", "jinja2", "uvicorn", "starlette")


def build_wheel(out: Path) -> Path:
    """``uv build --wheel`` of this checkout into ``out``; the wheel's path."""
    subprocess.run(
        [str(UV), "build", "--wheel", "--quiet", "--out-dir", str(out), str(REPO)],
        check=True,
        capture_output=True,
        text=True,
    )
    return next(out.glob("relaybus-*.whl"))


def fresh_venv(path: Path, *requirements: str) -> Path:
    """A new virtualenv at ``path`` with ``requirements`` (pinned by constraints.txt)
    installed; its ``bin`` folder."""
    subprocess.run(
        [str(UV), "venv", "--quiet", "--python", sys.executable, str(path)],
        check=True,
        capture_output=True,
    )
    if requirements:
        install(path / "bin", *requirements)
    return path / "bin"


def install(bin_dir: Path, *requirements: str) -> None:
    """``pip install`` into the virtualenv of ``bin_dir`` (uv, from its cache)."""
    proc = subprocess.run(
        [str(UV), "pip", "install", "--quiet", "--python", str(bin_dir / "python"),
         "-c", str(CONSTRAINTS), *requirements],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def pip_shim(bin_dir: Path, into: Path) -> Path:
    """A ``pip`` in ``into`` that installs into ``bin_dir``'s virtualenv through uv (with
    the pinned versions and uv's cache: the README's ``pip install`` line, run as is)."""
    into.mkdir(parents=True, exist_ok=True)
    shim = into / "pip"
    shim.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = install ] && shift && exec "{UV}" pip install --quiet '
        f'--python "{bin_dir / "python"}" -c "{CONSTRAINTS}" "$@"\n'
        'echo "pip shim: only install is supported" >&2; exit 2\n'
    )
    shim.chmod(0o755)
    return into


def environment(settings: Settings, bin_dirs: list[Path], database_url: str) -> dict[str, str]:
    """The environment a newcomer's shell has: the venv first on PATH, the stack's
    endpoints and credentials as RELAYBUS_* variables, their own database."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("RELAYBUS_", "VIRTUAL_ENV", "PYTHON"))
    }
    env["PATH"] = os.pathsep.join([*map(str, bin_dirs), "/usr/local/bin", "/usr/bin", "/bin"])
    env["RELAYBUS_DATABASE_URL"] = database_url
    env["RELAYBUS_KAFKA_BOOTSTRAP"] = settings.kafka_bootstrap
    env["RELAYBUS_RABBITMQ_URL"] = settings.rabbitmq_url.get_secret_value()
    env["RELAYBUS_RABBITMQ_MANAGEMENT_URL"] = settings.rabbitmq_management_url.get_secret_value()
    env["RELAYBUS_REDIS_URL"] = settings.redis_url
    return env


class Background:
    """Commands a README starts with ``&``: each in its own process group, all stopped
    (SIGTERM, then SIGKILL) when the block ends; their output kept for failures."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd, self.env = cwd, env
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(self, command: str) -> None:
        log = self.cwd / f"background-{len(self.procs)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["bash", "-c", f"exec {command}"],
                cwd=self.cwd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append((command, proc, log))

    def logs(self) -> str:
        return "\n".join(
            f"--- {command} (exit {proc.poll()})\n{log.read_text()[-3000:]}"
            for command, proc, log in self.procs
        )

    def stop(self) -> None:
        for _, proc, _ in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for _, proc, _ in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@contextmanager
def background(cwd: Path, env: dict[str, str]) -> Iterator[Background]:
    processes = Background(cwd, env)
    try:
        yield processes
    finally:
        processes.stop()


async def start_group_at_end(settings: Settings, topic: str, group: str) -> None:
    """Commit ``group``'s offsets at ``topic``'s end (if the topic exists), so a
    README's consumer group sees only what this run writes, as on a fresh stack."""
    if topic not in await list_topics(settings.kafka_bootstrap):
        return
    partitions = await topic_partitions(settings.kafka_bootstrap, topic)
    reader = committed_reader(settings.kafka_bootstrap, group_id=group)
    await reader.start()
    try:
        assigned = [TopicPartition(topic, p) for p in partitions]
        reader.assign(assigned)
        ends = await reader.end_offsets(assigned)
        await reader.commit(dict(ends))
    finally:
        await reader.stop()
