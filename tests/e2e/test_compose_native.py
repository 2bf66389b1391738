"""docker-compose.yml would really run the shop (issue 31 §7): every relaybus service of
the file runs natively (tests/support/compose_native.py) with the environment compose
gives it, as an unprivileged user, in a read-only copy of the app, and an order placed
through it ends CONFIRMED. Infrastructure comes from the native stack, set up as the
compose file's images would set it up: the PostgreSQL init script run as is, the
RabbitMQ default user, Redis with a password."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import socket
import subprocess
import tempfile
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from relaybus.db import create_engine
from relaybus.settings import Settings
from relaybus.shop.cli.flashsale import Workload, seed
from relaybus.shop.streams.admission.processor import AdmissionProcessor
from relaybus.shop.streams.readmodel.agent import APP_ID as ORDER_STATUS_APP
from relaybus.shop.streams.saga.agent import APP_ID as SAGA_APP
from relaybus.shop.streams.sharding.directory import shard_group
from relaybus.shop.streams.sharding.router import InventoryRouter
from relaybus.stack.postgres import Postgres, server_tool
from relaybus.stack.secure import RABBITMQ_USER, SecureMaterial
from relaybus.stack.settings import StackSettings
from tests.support.cli import REPO
from tests.support.compose_native import (
    NativeService,
    app_services,
    as_service_user,
    copy_app,
    load,
)
from tests.support.groups import all_consuming
from tests.support.poll import eventually

ONE_SHOTS = ("migrate", "shards")
ORDERS = 8
APP_ROLE = "relaybus_app"
# The consumer groups of the file's long-running services (shards 0 and 1, as its
# `shards` service sets). The saga's deadline runs from an order's commit: an order
# placed before these consume may be compensated on a loaded machine, as designed.
GROUPS = (
    AdmissionProcessor.name,
    InventoryRouter.name,
    "orders-admitted",
    "orders-throttled",
    "orders-transitions",
    "payments",
    shard_group(0),
    shard_group(1),
    SAGA_APP,
    ORDER_STATUS_APP,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(argv: list[str], env: dict[str, str], stdin: str | None = None) -> str:
    """Run ``argv`` as the database's superuser over its unix socket (as the image's
    entrypoint runs init scripts)."""
    pg = Postgres(StackSettings())
    full = {**env, "PGHOST": str(pg.run_dir), "PGPORT": str(StackSettings().postgres_port)}
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    done = subprocess.run(
        [*prefix, "env", *(f"{k}={v}" for k, v in full.items() if k != "APP_DB_PASSWORD"), *argv],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        # The password reaches the script through its environment only.
        env={**os.environ, "APP_DB_PASSWORD": env.get("APP_DB_PASSWORD", "")},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _superuser_sql(sql: str) -> None:
    _as_postgres([server_tool("psql"), "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-d", "postgres"],
                 {}, stdin=sql)  # fmt: skip


def _rabbit_permission(settings: Settings, method: str, vhost: str = "%2F") -> None:
    """The compose RabbitMQ image's default user has every right on vhost "/"."""
    url = f"{settings.rabbitmq_management}/api/permissions/{vhost}/{RABBITMQ_USER}"
    parts = urllib.parse.urlsplit(url)
    login = f"{parts.username}:{parts.password}".encode()
    plain_url = parts._replace(netloc=f"{parts.hostname}:{parts.port}").geturl()
    body = json.dumps({"configure": ".*", "write": ".*", "read": ".*"}).encode()
    request = urllib.request.Request(
        plain_url, data=body if method == "PUT" else None, method=method
    )
    request.add_header("content-type", "application/json")
    request.add_header("authorization", "Basic " + base64.b64encode(login).decode())
    with urllib.request.urlopen(request, timeout=10):
        pass


@pytest.fixture
def compose_infra(settings: Settings) -> Iterator[dict[str, object]]:
    """Supplied values for the file's ${VAR:?}, and the native endpoints they open."""
    run = uuid.uuid4().hex[:8]
    database = f"compose_{run}"
    values = {
        "POSTGRES_PASSWORD": secrets.token_urlsafe(16),  # the image's superuser: unused
        "APP_DB_PASSWORD": secrets.token_urlsafe(16) + "'\"$",  # quotes must not matter
        # The stack's user of that name already exists (vhost relaybus): the compose
        # one is the same user, given vhost "/" as RABBITMQ_DEFAULT_USER would have.
        "RABBITMQ_PASSWORD": SecureMaterial(StackSettings()).credentials().rabbitmq_password,
        "REDIS_PASSWORD": secrets.token_urlsafe(16),
    }
    _superuser_sql(_drop_leftovers_sql())  # a crashed earlier run's database and role
    _superuser_sql(f"CREATE DATABASE {database};")
    init = REPO / "relaybus" / "stack" / "compose" / "postgres-init.sh"
    _as_postgres(
        ["sh", str(init)],
        {"POSTGRES_USER": "postgres", "POSTGRES_DB": database, "APP_DB_PASSWORD": values[
            "APP_DB_PASSWORD"]},
    )  # fmt: skip
    _rabbit_permission(settings, "PUT")
    redis_port = _free_port()
    folder = Path(tempfile.mkdtemp(prefix="relaybus-compose-", dir="/var/tmp"))
    os.chmod(folder, 0o755)
    redis = subprocess.Popen(
        ["redis-server", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert redis.stdin is not None
    redis.stdin.write(  # the config on stdin: the password is on no command line
        f"port {redis_port}\nbind 127.0.0.1\nrequirepass {values['REDIS_PASSWORD']}\n"
        f'save ""\nappendonly no\ndir {folder}\n'.encode()
    )
    redis.stdin.close()
    try:
        yield {
            "values": values,
            "folder": folder,
            "network": {
                "@postgres:5432/relaybus": f"@127.0.0.1:{StackSettings().postgres_port}/{database}",
                "kafka:9092": settings.kafka_bootstrap,
                "@rabbitmq:5672/": "@127.0.0.1:5672/",
                "@rabbitmq:15672": "@127.0.0.1:15672",
                "@redis:6379/": f"@127.0.0.1:{redis_port}/",
                "http://gateway:8090": "http://127.0.0.1:8090",
                "http://order-status:8095": "http://127.0.0.1:8095",
            },
            "database_url": (
                f"postgresql+asyncpg://{APP_ROLE}:{urllib.parse.quote(values['APP_DB_PASSWORD'])}"
                f"@127.0.0.1:{StackSettings().postgres_port}/{database}"
            ),
        }
    finally:
        redis.terminate()
        redis.wait(10)
        _rabbit_permission(settings, "DELETE")
        _superuser_sql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE); DROP ROLE {APP_ROLE};")
        subprocess.run(["rm", "-rf", str(folder)], check=False)


def _leftover_databases() -> list[str]:
    out = _as_postgres(
        [server_tool("psql"), "-tA", "-U", "postgres", "-d", "postgres", "-c",
         "SELECT datname FROM pg_database WHERE datname LIKE 'compose\\_%'"],
        {},
    )  # fmt: skip
    return [line for line in out.splitlines() if line]


def _drop_leftovers_sql() -> str:
    drops = "".join(f"DROP DATABASE {d} WITH (FORCE);" for d in _leftover_databases())
    return drops + f"DROP ROLE IF EXISTS {APP_ROLE};"


@pytest.mark.timeout(900)
async def test_the_compose_file_runs_the_shop_natively_and_an_order_is_confirmed(
    compose_infra: dict[str, object], settings: Settings
) -> None:
    values: dict[str, str] = compose_infra["values"]  # type: ignore[assignment]
    folder: Path = compose_infra["folder"]  # type: ignore[assignment]
    network: dict[str, str] = compose_infra["network"]  # type: ignore[assignment]
    compose = load(REPO / "docker-compose.yml", values)
    app = copy_app(REPO, REPO / "Dockerfile", folder / "app")
    logs = folder / "logs"
    logs.mkdir()
    services = {
        name: NativeService(
            name, spec, network, {"/var/lib/relaybus": folder / "volumes" / name}, app, logs
        )
        for name, spec in app_services(compose).items()
    }
    assert set(ONE_SHOTS) <= set(services)
    # The app copy is read-only to the services' user: it can write only its volumes.
    assert await asyncio.to_thread(_exit_status, as_service_user(["touch", str(app / "x")])) != 0
    try:
        for name in ONE_SHOTS:  # service_completed_successfully, in the file's order
            status = await asyncio.to_thread(services[name].run, 300)
            assert status == 0, (name, services[name].log.read_text()[-3000:])
        # `docker compose run --rm migrate relaybus keys issue …`: a customer's key.
        keys = NativeService(
            "keys",
            {**compose["services"]["migrate"], "command": ["relaybus", "keys", "issue", "alice"]},
            network, {}, app, logs,
        )  # fmt: skip
        token = await asyncio.to_thread(_output, keys)
        engine = create_engine(str(compose_infra["database_url"]))
        try:
            (sku,) = await seed(engine, Workload(products=1, stock=ORDERS), uuid.uuid4().hex[:8])
        finally:
            await engine.dispose()
        long_running = [s for n, s in services.items() if n not in ONE_SHOTS]
        for service in long_running:
            service.start()

        async with httpx.AsyncClient(base_url="http://127.0.0.1:8080", timeout=10) as client:

            async def api_up() -> bool:
                try:
                    return (await client.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(api_up, within=180, what="the compose orders-api")

            async def consuming() -> bool:
                return await all_consuming(settings.kafka, GROUPS)

            await eventually(consuming, within=300, what="the compose services' consumer groups")
            auth = {"Authorization": f"Bearer {token}"}
            # Compose's gateway declines 20 % of charges and answers 5 % late (its
            # defaults): several orders, every one final, at least one CONFIRMED.
            order_ids = []
            for _ in range(ORDERS):
                placed = await client.post(
                    "/orders", json={"items": [{"product": sku, "quantity": 1}]}, headers=auth
                )
                assert placed.status_code == 202, placed.text
                order_ids.append(placed.json()["id"])

            async def statuses() -> list[dict[str, Any]]:
                return [
                    (await client.get(f"/orders/{order_id}", headers=auth)).json()
                    for order_id in order_ids
                ]

            async def final() -> bool:
                return all(o["status"] in ("CONFIRMED", "CANCELLED") for o in await statuses())

            await eventually(final, within=300, what="every order's end through compose's shop")
            orders = await statuses()
        confirmed = [o for o in orders if o["status"] == "CONFIRMED"]
        assert confirmed, (orders, _tails(services))
        for order in orders:
            if order["status"] == "CANCELLED":  # only by the gateway: refused or late
                reason = order["reason"] or ""
                assert any(w in reason for w in ("payment", "charging")), (order, _tails(services))
        for service in long_running:
            assert service.proc is not None
            assert service.proc.poll() is None, (service.name, _tails({service.name: service}))
        for service in services.values():
            text = service.log.read_text(errors="replace")
            assert values["APP_DB_PASSWORD"] not in text, service.name
            assert values["REDIS_PASSWORD"] not in text, service.name
    finally:
        for service in services.values():
            service.stop()


def _exit_status(argv: list[str]) -> int:
    return subprocess.run(argv, capture_output=True, check=False).returncode


def _output(service: NativeService) -> str:
    """A one-shot service's standard output (it must succeed)."""
    done = subprocess.run(
        service.argv(), cwd=service.app, env=service.environment(),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _tails(services: dict[str, NativeService]) -> str:
    return "\n".join(
        f"--- {n}\n{s.log.read_text(errors='replace')[-1500:]}"
        for n, s in services.items()
        if s.log.exists()
    )
