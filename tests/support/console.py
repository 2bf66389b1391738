"""A real ``relaybus console`` process for tests: a random password, its hash in the
environment (as an operator would set it), a free loopback port."""

from __future__ import annotations

import os
import secrets
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from relaybus.cli.console.auth import hash_password
from tests.support.cli import REPO

USER = "operator"


@dataclass
class ConsoleProcess:
    url: str
    password: str
    password_hash: str
    log: Path
    proc: subprocess.Popen[bytes]

    def signed_in(self) -> httpx.Client:
        """An HTTP client with a signed-in session (its cookie) and the page's CSRF token
        in ``client.headers['x-test-csrf']`` (for the tests' own forms)."""
        client = httpx.Client(base_url=self.url, timeout=30, follow_redirects=False)
        token = csrf_of(client.get("/login").text)
        answer = client.post(
            "/login", data={"csrf": token, "username": USER, "password": self.password}
        )
        assert answer.status_code == 303, answer.text
        client.headers["x-test-csrf"] = csrf_of(client.get("/").text)
        return client


def csrf_of(html: str) -> str:
    marker = 'name="csrf" value="'
    start = html.index(marker) + len(marker)
    return html[start : html.index('"', start)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def console_process(
    folder: Path, host: str = "127.0.0.1", verify: bool | ssl.SSLContext = True, **env: str
) -> Iterator[ConsoleProcess]:
    """Start ``relaybus console`` on ``host`` and wait until it answers (HTTPS when
    ``env`` names a certificate, checked against ``verify``); stop it afterwards."""
    password = secrets.token_urlsafe(18)
    hashed = hash_password(password)
    port = free_port()
    log = folder / f"console-{port}.log"
    script = Path(sys.executable).parent / "relaybus"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(script), "console", "--host", host, "--port", str(port)],
            cwd=REPO,
            env={**os.environ, "RELAYBUS_CONSOLE_PASSWORD_HASH": hashed, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    scheme = "https" if "RELAYBUS_CONSOLE_TLS_CERTFILE" in env else "http"
    url = f"{scheme}://{host}:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/login", timeout=2, verify=verify).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "console not answering within 60s"
            time.sleep(0.1)
        yield ConsoleProcess(url, password, hashed, log, proc)
    finally:
        proc.terminate()
        proc.wait(30)
