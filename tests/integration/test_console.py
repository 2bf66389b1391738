"""The console's gate against a real ``relaybus console`` process on the real stack:
every route the app registers refuses anonymous requests (enumerated, so a new route
cannot be forgotten), forged cross-site posts are refused and change nothing, the
secret appears nowhere, sign-in is throttled, it binds loopback by default, and it
does not start without a password hash."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.routing import APIRoute
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.brokers.stalls import Stall
from relaybus.cli.console.app import create_app
from relaybus.cli.console.auth import PasswordHash, hash_password
from relaybus.cli.console.guard import PUBLIC
from relaybus.outbox.store import PostgresOutboxStore
from relaybus.settings import Settings
from tests.support.cli import run_cli
from tests.support.console import ConsoleProcess, console_process, csrf_of

PATH_VALUES = {"broker": "kafka", "name": "t.nothing.dlq"}


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleProcess]:
    with console_process(tmp_path_factory.mktemp("console")) as running:
        yield running


def registered_routes() -> list[tuple[str, str]]:
    """(method, concrete path) of every route the console app registers."""
    app = create_app(Settings(), PasswordHash.parse(hash_password("x" * 12)))
    routes = []
    for route in app.app.routes:
        assert isinstance(route, APIRoute), f"unexpected route kind {route!r}"
        path = re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES[m.group(1)], route.path)
        routes.extend((method, path) for method in sorted(route.methods))
    return routes


def test_every_registered_route_refuses_anonymous_requests(console: ConsoleProcess) -> None:
    routes = registered_routes()
    assert {p for _, p in routes} >= {"/", "/outbox", "/dlq", "/audit", "/status.json"}
    forged = {"relaybus_console": "not-a-session"}
    with httpx.Client(base_url=console.url, timeout=30, follow_redirects=False) as client:
        for method, path in routes:
            if path in PUBLIC:
                continue
            for cookies in ({}, forged):
                client.cookies.clear()
                client.cookies.update(cookies)
                answer = client.request(method, path, data={"csrf": "x", "every": "yes"})
                if method == "GET" and not path.endswith(".json"):
                    assert answer.status_code == 303, (method, path)
                    assert answer.headers["location"] == "/login"
                else:
                    assert answer.status_code == 401, (method, path, answer.status_code)
                assert "Where work waits" not in answer.text


def newest_retry(client: httpx.Client) -> str | None:
    """The id of the newest ``outbox.retry`` audit row, read on the console's audit page."""
    found = re.search(r'<tr class="entry"><td class="num">(\d+)', client.get(
        "/audit", params={"q": "outbox.retry"}).text)  # fmt: skip
    return found.group(1) if found else None


def test_a_forged_cross_site_post_is_refused_and_changes_nothing(console: ConsoleProcess) -> None:
    client = console.signed_in()
    token = client.headers["x-test-csrf"]
    before = newest_retry(client)
    form = {"every": "yes"}
    refused = [
        client.post("/outbox/retry", data=form),  # no token
        client.post("/outbox/retry", data={**form, "csrf": "forged"}),
        client.post(
            "/outbox/retry", data={**form, "csrf": token}, headers={"origin": "http://evil.test"}
        ),
        client.post(
            "/outbox/retry", data={**form, "csrf": token}, headers={"sec-fetch-site": "cross-site"}
        ),
        client.post("/outbox/retry", content=b"{}", headers={"content-type": "application/json"}),
    ]
    assert [r.status_code for r in refused] == [403, 403, 403, 403, 415]
    assert newest_retry(client) == before  # nothing was done, so nothing was audited
    # The same form from the console's own page goes through, and is audited.
    accepted = client.post("/outbox/retry", data={**form, "csrf": token})
    assert accepted.status_code == 303
    assert "put back to pending" in client.get("/outbox").text
    assert newest_retry(client) != before


def test_the_secret_appears_nowhere(console: ConsoleProcess) -> None:
    client = console.signed_in()
    seen = [client.get(p).text for p in ("/", "/status.json", "/outbox", "/audit")]
    seen.append(console.log.read_text())
    for text_ in seen:
        assert console.password not in text_
        assert console.password_hash not in text_
        assert console.password_hash.split("$")[-1] not in text_
    cookie = client.cookies.get("relaybus_console")
    assert cookie is not None
    assert cookie not in console.log.read_text()
    # Signing out ends the session on the server: the old cookie opens nothing.
    client.post("/logout", data={"csrf": client.headers["x-test-csrf"]})
    with httpx.Client(base_url=console.url, cookies={"relaybus_console": cookie}) as stale:
        assert stale.get("/outbox").status_code == 303


def test_wrong_passwords_are_refused_then_throttled(tmp_path: Path) -> None:
    with console_process(tmp_path) as fresh, httpx.Client(base_url=fresh.url, timeout=30) as c:
        codes = []
        for _ in range(11):
            token = csrf_of(c.get("/login").text)
            answer = c.post(
                "/login", data={"csrf": token, "username": "operator", "password": "wrong"}
            )
            codes.append(answer.status_code)
            assert "wrong user name or password" in answer.text or answer.status_code == 429
        assert codes == [401] * 10 + [429]
        assert c.get("/outbox", follow_redirects=False).status_code == 303


def test_it_binds_loopback_by_default(console: ConsoleProcess) -> None:
    port = int(console.url.rsplit(":", 1)[1])
    listening = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port_hex = local.split(":")
        if int(port_hex, 16) == port and state == "0A":  # LISTEN
            listening.append(address)
    assert listening == ["0100007F"]  # 127.0.0.1, little-endian


def test_it_does_not_start_without_a_good_password_hash() -> None:
    missing = run_cli("console", env={"RELAYBUS_CONSOLE_PASSWORD_HASH": ""})
    assert missing.returncode == 2
    assert "RELAYBUS_CONSOLE_PASSWORD_HASH" in missing.stderr
    bad = run_cli("console", env={"RELAYBUS_CONSOLE_PASSWORD_HASH": "hunter2-" + uuid.uuid4().hex})
    assert bad.returncode == 2
    assert "not a relaybus console hash" in bad.stderr
    assert "hunter2" not in bad.stderr
    short = run_cli("console", "--hash-password", input="short\n")
    assert short.returncode == 2
    assert "12 characters" in short.stderr


def test_a_service_down_is_a_page_that_says_so(tmp_path: Path) -> None:
    down = {
        "RELAYBUS_DATABASE_URL": "postgresql+asyncpg://relaybus:relaybus@127.0.0.1:1/relaybus",
        "RELAYBUS_KAFKA_BOOTSTRAP": "127.0.0.1:1",
    }
    with console_process(tmp_path, **down) as broken:
        client = broken.signed_in()
        outbox = client.get("/outbox")
        assert outbox.status_code == 503
        assert "unreachable" in outbox.text
        overview = client.get("/")
        assert overview.status_code == 200
        assert "outbox: unreachable" in overview.text
        assert "kafka: unreachable" in overview.text
        assert "Traceback" not in broken.log.read_text()


async def test_the_outbox_page_shows_a_stalled_destination_as_text(
    console: ConsoleProcess, engine: AsyncEngine
) -> None:
    """What a relay records while a Kafka partition does not acknowledge is on the
    outbox page (which partition, which node, since when), markup escaped."""
    store = PostgresOutboxStore(engine)
    instance = f"relay-{uuid.uuid4().hex[:8]}"
    leader = "node 2 at <script>alert(1)</script>"
    await store.record_stalls(
        instance, [Stall("kafka", "outbox.event.orders[3]", leader, time.time() - 30, 4)]
    )
    try:
        page = console.signed_in().get("/outbox").text
        assert "Stalled destinations" in page
        assert "outbox.event.orders[3]" in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert "<script>alert(1)" not in page
    finally:
        await store.record_stalls(instance, [])
    assert "Stalled destinations" not in console.signed_in().get("/outbox").text
