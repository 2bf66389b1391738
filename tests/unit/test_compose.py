"""docker-compose.yml is valid against the Compose Specification schema.

No Docker engine runs here, so the schema (shared/schemas/compose-spec.json, vendored
under tests/data as a fallback) is the check, plus the project's own rules.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from relaybus.consumers.worker import load_app
from relaybus.shop.cli.serve import SERVICES
from relaybus.shop.cli.stream import PROCESSORS
from tests.support.cli import invoke as run_cli

INFRA = ("kafka", "rabbitmq", "postgres", "redis")


def _schema(repo: Path) -> dict[str, Any]:
    shared = repo.parent / "shared" / "schemas" / "compose-spec.json"
    path = shared if shared.exists() else repo / "tests" / "data" / "compose-spec.json"
    return json.loads(path.read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def compose(repo: Path) -> dict[str, Any]:
    return yaml.safe_load((repo / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


def test_compose_file_matches_the_compose_spec(repo: Path, compose: dict[str, Any]) -> None:
    # The file declares draft-07; say so explicitly rather than let jsonschema guess.
    jsonschema.Draft7Validator(_schema(repo)).validate(compose)


def test_infrastructure_services_have_healthchecks(compose: dict[str, Any]) -> None:
    for name in INFRA:
        assert "healthcheck" in compose["services"][name], name


def test_kafka_runs_kraft_from_the_apache_image(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "broker,controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]


def test_postgres_has_logical_wal(compose: dict[str, Any]) -> None:
    assert "wal_level=logical" in " ".join(compose["services"]["postgres"]["command"])


def test_relaybus_services_wait_for_healthy_dependencies(compose: dict[str, Any]) -> None:
    apps = {n: s for n, s in compose["services"].items() if n not in INFRA}
    assert {"migrate", "relay", "orders-api", "saga"} <= set(apps)
    for name, svc in apps.items():
        assert "build" in svc, name
        deps = svc["depends_on"]
        for infra in ("postgres",):
            assert deps[infra]["condition"] == "service_healthy", name


def test_host_ports_bind_loopback_only(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_no_password_has_a_default_in_the_file(repo: Path) -> None:
    text = (repo / "docker-compose.yml").read_text()
    secrets = re.findall(r"\$\{(\w*PASSWORD\w*)(:?[?-])?", text)
    assert secrets, "passwords come from the environment"
    for name, mode in secrets:
        assert mode == ":?", f"${{{name}}} must be required (:?), never defaulted"
    assert "relaybus:relaybus@" not in text
    example = (repo / ".env.example").read_text()
    for name, _ in secrets:
        assert f"{name}=" in example, name


def test_the_application_uses_a_non_superuser_role(repo: Path, compose: dict[str, Any]) -> None:
    url = compose["x-relaybus-env"]["RELAYBUS_DATABASE_URL"]
    assert url.startswith("postgresql+asyncpg://relaybus_app:")
    init = (repo / "relaybus" / "stack" / "compose" / "postgres-init.sh").read_text()
    assert "NOSUPERUSER" in init
    redis = compose["services"]["redis"]
    assert "--requirepass" in " ".join(redis["command"])


def test_every_relaybus_command_names_something_that_exists(compose: dict[str, Any]) -> None:
    apps = {n: s for n, s in compose["services"].items() if "build" in s}
    for name, svc in apps.items():
        program, *args = svc["command"]
        assert program == "relaybus", name
        if args[0] == "worker":
            load_app(args[1])  # raises WorkerNotFound for an app that does not exist
            continue
        # --help does not check NAME: these two take theirs from a fixed list.
        if args[0] == "serve":
            assert args[1] in SERVICES, (name, args)
        if args[0] == "stream":
            assert args[1] in PROCESSORS, (name, args)
        result = run_cli(*args, "--help")
        assert result.returncode == 0, (name, args, result.stderr)


def test_every_image_is_pinned_to_an_exact_version(repo: Path, compose: dict[str, Any]) -> None:
    """A floating tag (postgres:16, redis:7) changes under a running deployment."""
    exact = re.compile(r"^[\w./-]+:\d+\.\d+\.\d+[\w.-]*$")
    postgres = re.compile(r"^postgres:\d+\.\d+$")  # two parts since PostgreSQL 10
    for name, svc in compose["services"].items():
        if "image" in svc:
            image = svc["image"]
            assert exact.match(image) or postgres.match(image), (name, image)
    base = re.search(r"^FROM (\S+)", (repo / "Dockerfile").read_text(), re.MULTILINE)
    assert base is not None
    assert exact.match(base.group(1)), base.group(1)


def test_the_shard_set_exists_before_the_router_and_faust_writes_only_volumes(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert services["shards"]["command"][:3] == ["relaybus", "shards", "set"]
    router = services["inventory-router"]["depends_on"]
    assert router["shards"]["condition"] == "service_completed_successfully"
    data_dir = compose["x-relaybus-env"]["RELAYBUS_FAUST_DATA_DIR"]
    for faust_app in ("saga", "order-status"):
        mounts = [str(v).split(":", 1)[1] for v in services[faust_app]["volumes"]]
        assert data_dir in mounts, faust_app
