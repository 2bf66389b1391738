"""The stack command itself: status, idempotent up/down, clear errors."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from relaybus.settings import Settings
from relaybus.stack.errors import StackError
from relaybus.stack.kafka_broker import KafkaCluster
from relaybus.stack.redis import RedisInstances
from relaybus.stack.secure import _env_lines
from relaybus.stack.settings import StackSettings
from relaybus.stack.stack import Stack
from tests.support.cli import run_cli


def test_status_reports_the_four_services_with_endpoints() -> None:
    proc = run_cli("stack", "status", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    for name, scheme in (
        ("postgresql", "postgresql://"),
        ("redis", "redis://"),
        ("rabbitmq", "amqp://"),
        ("kafka", "127.0.0.1:9092"),
    ):
        assert rows[name]["running"], name
        assert rows[name]["endpoint"].startswith(scheme), rows[name]
        assert rows[name]["pid"] > 0


def test_up_when_already_up_keeps_the_same_processes() -> None:
    before = {r.name: r.pid for r in Stack().status()}
    proc = run_cli("stack", "up", "--no-install")
    assert proc.returncode == 0, proc.stderr
    after = {r.name: r.pid for r in Stack().status()}
    assert after == before


@pytest.fixture
def busy_port() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def test_busy_port_is_a_one_line_error_naming_it(tmp_path: Path, busy_port: int) -> None:
    env = {
        "RELAYBUS_STACK_DATA_DIR": str(tmp_path),
        "RELAYBUS_STACK_POSTGRES_PORT": str(busy_port),
    }
    proc = run_cli("stack", "up", "--no-install", env=env)
    assert proc.returncode == 1
    first = proc.stderr.strip().splitlines()[0]
    assert f"port 127.0.0.1:{busy_port} is busy" in first
    assert "postgresql" in first
    assert "Traceback" not in proc.stderr


def test_start_twice_and_stop_twice_are_harmless(tmp_path: Path) -> None:
    free = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        free.append(s)
    ports = [s.getsockname()[1] for s in free]
    for s in free:
        s.close()
    settings = StackSettings(data_dir=tmp_path, redis_port=ports[0], redlock_ports=(ports[1],))
    redis = RedisInstances(settings)
    redis.start()
    first = [r.pid for r in redis.status()]
    redis.start()
    assert [r.pid for r in redis.status()] == first
    assert redis.stop() is True
    assert redis.stop() is False
    assert not any(r.running for r in redis.status())


def test_down_with_nothing_running_stops_nothing(tmp_path: Path) -> None:
    assert Stack(StackSettings(data_dir=tmp_path)).down() == []


def test_busy_port_raises_stack_error(tmp_path: Path, busy_port: int) -> None:
    settings = StackSettings(data_dir=tmp_path, redis_port=busy_port, redlock_ports=())
    with pytest.raises(StackError, match="is busy"):
        RedisInstances(settings).start()


def test_kafka_storage_formats_with_a_cluster_id_that_starts_with_a_dash(tmp_path: Path) -> None:
    """URL-safe base64 ids start with "-" one time in 32; the format tool must not read
    such an id as an option (it did, and failed a CI run)."""
    cluster = KafkaCluster.single(StackSettings(data_dir=tmp_path))
    cluster.home.mkdir(parents=True)
    (cluster.home / "cluster.id").write_text("-kQikDzhR6OfB1v61NOeVg")
    cluster._format()
    meta = (cluster.nodes[0].home / "data" / "meta.properties").read_text()
    assert "cluster.id=-kQikDzhR6OfB1v61NOeVg" in meta


def test_the_authenticated_endpoints_and_toxiproxy_run_and_their_secrets_are_private() -> None:
    rows = {r.name: r for r in Stack().status()}
    assert rows["toxiproxy"].running
    assert "SASL_SSL" in rows["kafka"].detail
    assert "amqps://relaybus:***@" in rows["rabbitmq"].detail
    secure = StackSettings().data_dir / "secure"
    assert secure.stat().st_mode & 0o777 == 0o700
    private = ("server.key", "kafka-keystore.pem", "credentials.json", "client.env", "local.env")
    for name in (*private, "connect-secrets.properties"):
        assert (secure / name).stat().st_mode & 0o777 == 0o600, name
    # The passwords are nowhere in what `stack status` prints.
    credentials = json.loads((secure / "credentials.json").read_text())
    printed = run_cli("stack", "status", "--json").stdout + run_cli("stack", "status").stdout
    for password in credentials.values():
        assert password not in printed


def test_no_account_of_the_stack_has_a_well_known_password(settings: Settings) -> None:
    """On a shared host any local account reaches loopback (issue 31 §7): the
    PostgreSQL role's password is generated, RabbitMQ's guest is gone, and the
    clients find the generated credentials in .stack/secure/local.env."""
    well_known = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "relaybus", "-d", "relaybus", "-c", "SELECT 1"],
        env={**os.environ, "PGPASSWORD": "relaybus"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert well_known.returncode != 0
    assert "password authentication failed" in well_known.stderr
    guest = urllib.request.Request("http://127.0.0.1:15672/api/whoami")
    guest.add_header("authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(guest, timeout=10)
    assert refused.value.code == 401
    assert "relaybus:relaybus@" not in settings.database_url
    assert settings.database_url.startswith("postgresql+asyncpg://relaybus:")  # local.env's
    assert run_cli("outbox", "status", "--json").returncode == 0  # a client still gets in


def test_the_local_ca_signs_only_for_loopback_and_its_key_is_gone() -> None:
    secure = StackSettings().data_dir / "secure"
    assert not (secure / "ca.key").exists()
    shown = subprocess.run(
        ["openssl", "x509", "-in", str(secure / "ca.pem"), "-noout", "-ext", "nameConstraints"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "IP:127.0.0.1/255.255.255.255" in shown
    assert "DNS:localhost" in shown


def test_env_files_read_back_exactly_in_a_shell(tmp_path: Path) -> None:
    odd = 'it\'s $HOME `x` \\ "q" @:/?='
    path = tmp_path / "env"
    path.write_text(_env_lines({"RELAYBUS_X": odd}))
    shown = subprocess.run(
        ["sh", "-c", f'. {path}; printf %s "$RELAYBUS_X"'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert shown == odd
