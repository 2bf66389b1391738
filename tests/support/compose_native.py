"""docker-compose.yml run natively: the closest honest ``compose up`` where no container
engine runs (DESIGN §5).

Each relaybus service's resolved command runs with exactly the environment compose
would give it (the file's ``environment``, anchors merged, ``${VAR:?}`` interpolated
from supplied values, plus the image's own ENV), as an unprivileged user, in a copy
of the app directory made the way the Dockerfile makes /app and left read-only, with
only the service's declared volumes writable. What a container network does is
mapped, and only that: a service name's host:port becomes the native endpoint, a
bind to 0.0.0.0 becomes loopback, and a volume's mount path becomes a private folder.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

_VARIABLE = re.compile(r"\$(?:\$|\{(\w+)(?::?([?-])([^}]*))?\})")
# What the image sets (Dockerfile ENV, the python image's PATH) besides compose.
IMAGE_ENV = {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "HOME": "/nonexistent"}


class MissingVariable(KeyError):
    """A ``${VAR:?message}`` with no value: compose refuses to start."""


def interpolate(text: str, values: Mapping[str, str]) -> str:
    """Compose's interpolation: ``$$`` is a dollar, ``${X}`` a value (empty if unset),
    ``${X:-d}`` a default, ``${X:?msg}`` required."""

    def one(match: re.Match[str]) -> str:
        name, mode, arg = match.group(1), match.group(2), match.group(3)
        if name is None:
            return "$"
        value = values.get(name, "")
        if mode == "?" and not value:
            raise MissingVariable(f"{name}: {arg}")
        if mode == "-" and not value:
            return arg
        return value

    return _VARIABLE.sub(one, text)


def load(compose_file: Path, values: Mapping[str, str]) -> dict[str, Any]:
    """The file, interpolated, anchors and ``<<`` merges resolved."""
    loaded: dict[str, Any] = yaml.safe_load(interpolate(compose_file.read_text(), values))
    return loaded


def app_services(compose: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The services built from the Dockerfile (the relaybus processes)."""
    return {n: s for n, s in compose["services"].items() if "build" in s}


def copy_app(repo: Path, dockerfile: Path, target: Path) -> Path:
    """/app as the Dockerfile makes it (its ``COPY`` lines into its ``WORKDIR``),
    compiled, then read-only for everyone."""
    target.mkdir(parents=True)
    for line in dockerfile.read_text().splitlines():
        parts = line.split()
        if not parts or parts[0] != "COPY":
            continue
        *sources, destination = parts[1:]
        for source in sources:
            origin = repo / source
            into = target / (origin.name if destination.endswith("/") else destination)
            if origin.is_dir():
                shutil.copytree(origin, into, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(origin, into)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(target)], check=True)
    for folder, dirs, files in os.walk(target):
        for name in dirs:
            os.chmod(Path(folder) / name, 0o555)
        for name in files:
            os.chmod(Path(folder) / name, 0o444)
    os.chmod(target, 0o555)
    return target


def unprivileged() -> tuple[int, int] | None:
    """(uid, gid) of ``nobody`` when we may switch to it (running as root), else None:
    then the services run as the current, already unprivileged, user."""
    if os.geteuid() != 0:
        return None
    entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid


def as_service_user(argv: list[str]) -> list[str]:
    """``argv`` run as the image's user (``nobody``), environment untouched."""
    ids = unprivileged()
    if ids is None:
        return argv
    uid, gid = ids
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *argv]


class NativeService:
    """One compose service's process, mapped as the module docstring says."""

    def __init__(
        self,
        name: str,
        spec: Mapping[str, Any],
        network: Mapping[str, str],
        volumes: Mapping[str, Path],
        app: Path,
        logs: Path,
    ) -> None:
        self.name = name
        self.command = [str(a) for a in spec["command"]]
        self.env = {**IMAGE_ENV, **{k: str(v) for k, v in (spec.get("environment") or {}).items()}}
        for key, value in list(self.env.items()):
            for service_address, native in network.items():
                value = value.replace(service_address, native)
            if value == "0.0.0.0":
                value = "127.0.0.1"
            for mount, folder in volumes.items():
                value = value.replace(mount, str(folder))
            self.env[key] = value
        declared = [str(v).split(":", 1)[1] for v in spec.get("volumes", [])]
        self.volumes = {mount: volumes[mount] for mount in declared}
        self.app = app
        self.log = logs / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        program, *args = self.command
        # The image's PATH finds `relaybus`; natively it is this interpreter's script.
        return as_service_user([str(Path(sys.executable).parent / program), *args])

    def environment(self) -> dict[str, str]:
        # Only what compose and the image give, plus where this interpreter finds the
        # copy's packages first (the image installs /app itself): nothing of ours.
        return {
            **self.env,
            "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
            "PYTHONPATH": str(self.app),
        }

    def start(self) -> None:
        for folder in self.volumes.values():
            folder.mkdir(parents=True, exist_ok=True)
            if (ids := unprivileged()) is not None:
                os.chown(folder, *ids)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv(),
                cwd=self.app,
                env=self.environment(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def run(self, timeout: float) -> int:
        """Run to completion (a one-shot service); its exit status."""
        self.start()
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
