"""Installs the Debian packages the native stack runs on, when missing."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

from relaybus.stack.errors import StackError

# (package, a file it installs that proves it is there; a glob pattern)
PACKAGES: tuple[tuple[str, str], ...] = (
    ("postgresql", "/usr/lib/postgresql/*/bin/postgres"),
    ("rabbitmq-server", "/usr/lib/rabbitmq/bin/rabbitmq-server"),
    ("redis-server", "/usr/bin/redis-server"),
    ("kcat", "/usr/bin/kcat"),
    ("maven", "/usr/bin/mvn"),
    # Not a service: the headless browser the console tests drive (Playwright).
    ("chromium", "/usr/bin/chromium"),
)


def missing_packages() -> list[str]:
    """Names of the packages whose marker file is absent."""
    return [name for name, marker in PACKAGES if not glob.glob(marker)]


def ensure_packages() -> list[str]:
    """apt-get install whatever is missing (one ``apt-get update`` first); return what was.

    Package post-install scripts must not start system-wide daemons on their own
    ports: the stack starts its own instances, so starts are denied while installing.
    """
    missing = missing_packages()
    if not missing:
        return []
    if shutil.which("apt-get") is None:
        raise StackError(f"missing packages {', '.join(missing)} and no apt-get to install them")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    policy = "/usr/sbin/policy-rc.d"
    created_policy = False
    if os.geteuid() == 0 and not os.path.exists(policy):
        with open(policy, "w") as fh:
            fh.write("#!/bin/sh\nexit 101\n")
        os.chmod(policy, 0o755)
        created_policy = True
    try:
        for argv in (
            [*sudo, "apt-get", "update", "-qq"],
            [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        ):
            proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
            if proc.returncode != 0:
                raise StackError(
                    f"{' '.join(argv[:3])} failed (exit {proc.returncode})",
                    (proc.stdout + proc.stderr)[-3000:],
                )
    finally:
        if created_policy:
            os.unlink(policy)
    return missing
