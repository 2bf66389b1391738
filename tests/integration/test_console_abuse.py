"""The console under abuse (issue 31 §3, §4), against real ``relaybus console``
processes on the real stack: forwarded headers from an untrusted peer pick nothing,
a non-ASCII CSRF value is a 403, a foreign Host is refused (DNS rebinding), it will
not serve plain HTTP beyond loopback and marks cookies Secure from the scheme in use,
and DLQ pages are bounded in count, bytes and time and say when they were cut."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from relaybus.brokers.kafka_admin import ensure_topic
from relaybus.consumers.dlq_admin import BrowseLimits, KafkaDeadLetters, browse
from relaybus.settings import Settings
from tests.support.cli import run_cli
from tests.support.console import ConsoleProcess, console_process, csrf_of
from tests.support.foreign import kcat_produce


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleProcess]:
    with console_process(tmp_path_factory.mktemp("abuse")) as running:
        yield running


def test_forwarded_for_from_an_untrusted_peer_does_not_dodge_the_throttle(
    tmp_path: Path,
) -> None:
    """Twelve wrong passwords, each claiming another X-Forwarded-For: uvicorn's default
    believed it from loopback, so each was a new address and none was throttled."""
    with console_process(tmp_path) as fresh, httpx.Client(base_url=fresh.url, timeout=30) as c:
        codes = []
        for n in range(12):
            token = csrf_of(c.get("/login").text)
            answer = c.post(
                "/login",
                data={"csrf": token, "username": "operator", "password": "wrong"},
                headers={"x-forwarded-for": f"203.0.113.{n}", "x-real-ip": f"198.51.100.{n}"},
            )
            codes.append(answer.status_code)
    assert codes[:10] == [401] * 10
    assert codes[-1] == 429


@pytest.mark.parametrize("token", ["é" * 43, "%FF%FE", "\u0000"])
def test_a_non_ascii_csrf_value_is_refused_not_a_crash(console: ConsoleProcess, token: str) -> None:
    client = console.signed_in()
    answer = client.post("/outbox/retry", data={"csrf": token, "every": "yes"})
    assert answer.status_code == 403
    assert "Traceback" not in console.log.read_text()


def test_a_foreign_host_is_refused(console: ConsoleProcess) -> None:
    """A DNS-rebinding page reaches 127.0.0.1 under its own name."""
    with httpx.Client(base_url=console.url, timeout=30) as client:
        assert client.get("/login", headers={"host": "evil.example"}).status_code == 400
        port = console.url.rsplit(":", 1)[1]
        for name in ("127.0.0.1", "localhost", f"localhost:{port}"):
            assert client.get("/login", headers={"host": name}).status_code == 200, name


def test_beyond_loopback_it_needs_tls_or_a_declared_proxy() -> None:
    plain_http = run_cli(
        "console",
        "--host",
        "127.0.0.2",
        env={"RELAYBUS_CONSOLE_PASSWORD_HASH": "scrypt$32768$8$1$AAAA$" + "A" * 44},
    )
    assert plain_http.returncode == 2
    assert "RELAYBUS_CONSOLE_TLS_CERTFILE" in plain_http.stderr
    assert "Traceback" not in plain_http.stderr


def test_over_tls_the_cookie_is_secure(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.2", "-addext", "subjectAltName=IP:127.0.0.2",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    env = {"RELAYBUS_CONSOLE_TLS_CERTFILE": str(cert), "RELAYBUS_CONSOLE_TLS_KEYFILE": str(key)}
    trust = ssl.create_default_context(cafile=str(cert))
    with console_process(tmp_path, host="127.0.0.2", verify=trust, **env) as tls:
        answer = httpx.get(f"{tls.url}/login", verify=trust)
        cookie = answer.headers["set-cookie"].lower()
        assert "secure" in cookie
        assert "httponly" in cookie
    # Plain HTTP on loopback: the cookie is not marked Secure (it would never return).
    with console_process(tmp_path) as local:
        assert "secure" not in httpx.get(f"{local.url}/login").headers["set-cookie"].lower()


async def test_dlq_pages_are_bounded_and_say_so(
    console: ConsoleProcess, settings: Settings
) -> None:
    """Letters with ~300 KB of headers each: the page shows each header cut to a few
    hundred bytes and says so; it stays small whatever the letters carry."""
    dlq = f"t.abuse.{uuid.uuid4().hex[:8]}.dlq"
    await ensure_topic(settings.kafka_bootstrap, dlq, 1)
    big = [(f"h{n}".encode(), b"<b>" + b"v" * 30_000) for n in range(10)]
    bodies = [json.dumps({"n": n}).encode() for n in range(20)]
    await asyncio.to_thread(
        kcat_produce,
        settings.kafka_bootstrap,
        dlq,
        b"k",
        bodies,
        [(b"id", str(uuid.uuid4()).encode()), (b"x-dlq-reason", b"max-attempts"), *big],
    )
    page = console.signed_in().get(f"/dlq/kafka/{dlq}")
    assert page.status_code == 200
    assert page.text.count('class="letter"') == 20
    assert "This view was cut" in page.text
    assert len(page.content) < 20 * 10 * 2_000  # not 20 x 300 KB
    assert "<b>vvv" not in page.text  # and still escaped


async def _kafka_dlq_of(settings: Settings, letters: int) -> str:
    """A new Kafka DLQ holding ``letters`` letters written by kcat."""
    dlq = f"t.scan.{uuid.uuid4().hex[:8]}.dlq"
    await ensure_topic(settings.kafka_bootstrap, dlq, 1)
    headers = [(b"id", str(uuid.uuid4()).encode())]
    await asyncio.to_thread(
        kcat_produce, settings.kafka_bootstrap, dlq, b"k", [b"{}"] * letters, headers
    )
    return dlq


async def test_a_kafka_scan_ends_when_a_purge_runs_meanwhile(settings: Settings) -> None:
    dlq = await _kafka_dlq_of(settings, 1_200)
    store = KafkaDeadLetters(settings.kafka)
    seen = 0
    async with asyncio.timeout(60):  # a scan that never ends fails here
        async for _ in store.letters(dlq):
            seen += 1
            if seen == 1:
                assert await store.purge(dlq) == 1_200
    assert 1 <= seen <= 1_200


async def test_a_look_at_a_dlq_reads_a_bounded_number_of_letters(settings: Settings) -> None:
    dlq = await _kafka_dlq_of(settings, 300)
    store = KafkaDeadLetters(settings.kafka)
    nothing = await browse(store, dlq, lambda d: False, BrowseLimits(letters=10, scanned=100))
    assert nothing.letters == []
    assert nothing.cut == "stopped after reading 100 letters"
    some = await browse(store, dlq, lambda d: True, BrowseLimits(letters=10, scanned=100))
    assert len(some.letters) == 10
    assert some.cut is None
