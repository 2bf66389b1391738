"""``make test``: every test against the real services, in runs side by side.

Runs share the machine only where they cannot disturb each other:

- ``integration+e2e`` — ``tests/integration`` then ``tests/e2e`` in one pytest run on
  the main stack (the one ``make test`` started): nothing there stops a service. (Split
  in two runs side by side, the shop's CPU-bound e2e runs took longer.)
- ``chaos`` — ``tests/chaos`` without the cluster tests: they stop, freeze and restart
  PostgreSQL, Kafka and RabbitMQ, so they get a **stack of their own**: the same
  ``relaybus stack up`` with another data folder, other ports and another RabbitMQ
  node name (``FAULTS_STACK``), started here, migrated, and stopped at the end.
- ``kafka3`` — the tests that stop and freeze brokers of the 3-node cluster
  (``relaybus stack up --kafka-nodes 3``, started here next to the single node that
  the other runs use), with a database of their own on the main server
  (``CLUSTER_DATABASE``): the integration tests' WAL relays read every outbox row of
  their database, and the outbox's per-key locks are per database.
  The benchmark smoke run (``bench`` marker) follows them in that run and database
  (on the single Kafka node): about four minutes of CPU taken out of the longest run
  and spent while the integration tests wait on brokers.
- ``chaos+e2e+tracing`` continues, after the fault tests, with the shop tests of
  ``ON_FAULTS_STACK`` (their shops on ports of their own) and then ``tests/tracing``
  on the same faults stack: they start its Jaeger (``relaybus stack up --tracing``'s),
  which ``build_jaeger`` builds in the background from the start (niced: minutes of CPU
  on a fresh machine, taken mostly while the other runs wait on brokers).
- ``unit`` — ``tests/unit``: no service.

The integration tests wait on brokers about half of the time and the fault tests
mostly wait out outages and restarts: the runs side by side fill that time.

Prints each run's output with its name, then a table of the runs' wall times. Exit
status: 0 only if every run passed. Extra arguments go to every pytest run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dotenv import dotenv_values
from sqlalchemy import make_url

from relaybus.settings import Settings
from relaybus.stack.errors import StackError
from relaybus.stack.jaeger import Jaeger
from relaybus.stack.postgres import Postgres
from relaybus.stack.settings import StackSettings
from relaybus.stack.stack import Stack

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RELAYBUS = str(BIN / "relaybus")

# The fault tests' own stack: ports of the 21xxx range (none of the main stack's, the
# cluster's nor the kernel's ephemeral range), its own folder and RabbitMQ node.
FAULTS_DATA = REPO / ".stack-faults"
FAULTS_STACK = {
    "RELAYBUS_STACK_DATA_DIR": str(FAULTS_DATA),
    "RELAYBUS_STACK_POSTGRES_PORT": "21432",
    "RELAYBUS_STACK_POSTGRES_PROXIED_PORT": "21433",
    "RELAYBUS_STACK_REDIS_PORT": "21379",
    "RELAYBUS_STACK_REDLOCK_PORTS": "[21380, 21381, 21382]",
    "RELAYBUS_STACK_RABBITMQ_PORT": "21672",
    "RELAYBUS_STACK_RABBITMQ_TLS_PORT": "21671",
    "RELAYBUS_STACK_RABBITMQ_PROXIED_PORT": "21673",
    "RELAYBUS_STACK_RABBITMQ_MANAGEMENT_PORT": "21772",
    "RELAYBUS_STACK_RABBITMQ_DIST_PORT": "21872",
    "RELAYBUS_STACK_RABBITMQ_NODE": "relaybus-faults@localhost",
    "RELAYBUS_STACK_KAFKA_PORT": "21092",
    "RELAYBUS_STACK_KAFKA_CONTROLLER_PORT": "21093",
    "RELAYBUS_STACK_KAFKA_SECURE_PORT": "21094",
    "RELAYBUS_STACK_KAFKA_PROXIED_UPSTREAM_PORT": "21095",
    "RELAYBUS_STACK_KAFKA_PROXIED_PORT": "21096",
    "RELAYBUS_STACK_TOXIPROXY_PORT": "21474",
    "RELAYBUS_STACK_CONNECT_PORT": "21083",
    "RELAYBUS_STACK_JAEGER_OTLP_PORT": "21318",
    "RELAYBUS_STACK_JAEGER_QUERY_PORT": "21686",
}


def faults_clients() -> dict[str, str]:
    """The clients' settings for the faults stack: its generated credentials (the
    ``local.env`` its ``stack up`` wrote) and its endpoints. Environment variables win
    over the main stack's ``.stack/secure/local.env`` that every process also reads."""
    written = dotenv_values(FAULTS_DATA / "secure" / "local.env")
    return {
        **FAULTS_STACK,
        **{k: v for k, v in written.items() if v is not None},
        "RELAYBUS_KAFKA_BOOTSTRAP": "127.0.0.1:21092",
        "RELAYBUS_REDIS_URL": "redis://127.0.0.1:21379/0",
        "RELAYBUS_REDLOCK_URLS": json.dumps(
            [f"redis://127.0.0.1:{port}/0" for port in (21380, 21381, 21382)]
        ),
        # The shops of this run (tests/support/shop.py) listen away from the main
        # stack's shops, which run at the same time.
        "RELAYBUS_ORDERS_API_PORT": "21180",
        "RELAYBUS_GATEWAY_PORT": "21190",
        "RELAYBUS_READ_MODEL_PORT": "21195",
    }


CLUSTER_DATABASE = "relaybus_cluster_tests"


def cluster_clients() -> dict[str, str]:
    """The kafka3 run's clients: the main stack, ``CLUSTER_DATABASE`` on its server."""
    url = make_url(Settings().database_url).set(database=CLUSTER_DATABASE)
    return {"RELAYBUS_DATABASE_URL": url.render_as_string(hide_password=False)}


def _recreate_cluster_database() -> None:
    # As the server's superuser (through the stack): the bench smoke run that follows
    # the cluster tests needs pg_stat_statements, which the relaybus role cannot create.
    Postgres(StackSettings()).recreate_database(CLUSTER_DATABASE)


def stop_faults_stack() -> None:
    _step("faults stack", [RELAYBUS, "stack", "down"], FAULTS_STACK).wait()


def stop_cluster() -> None:
    """The 3-node cluster only (the main stack's single node goes on)."""
    print("::: cluster: stopped" if Stack().cluster.stop() else "::: cluster: not running")


@dataclass
class Run:
    """One pytest process; its clients' environment is made when it starts (after
    the stacks, whose credentials it reads). ``after`` runs as soon as it ends: the
    services only it used are stopped then, not at the end (four idle JVMs took a
    good part of a core from the runs still going)."""

    name: str
    args: list[str]
    env_of: str | None = None  # a key of CLIENTS: whose services the run's clients use
    after: Callable[[], None] | None = None
    seconds: float = 0.0
    code: int | None = None


CLIENTS = {"faults": faults_clients, "cluster": cluster_clients}
# Shop end-to-end tests that run on the faults stack, between the fault tests and the
# tracing tests (a stack of their own: nothing there shares a topic, a group, a port or
# a database with the main stack's shops): two minutes out of the longest run.
ON_FAULTS_STACK = ["tests/e2e/test_shop.py"]
RUNS = [
    Run(
        "integration+e2e",
        [
            "tests/integration",
            "tests/e2e",
            *(f"--ignore={path}" for path in ON_FAULTS_STACK),
            "-m",
            "not kafka3 and not bench and not alongside",
        ],
    ),
    # The tracing tests follow the fault tests on their stack, whose Jaeger they start:
    # built meanwhile (``build_jaeger``), while the fault tests mostly wait on outages.
    Run(
        "chaos+e2e+tracing",
        ["tests/chaos", *ON_FAULTS_STACK, "tests/tracing", "-m", "not kafka3"],
        env_of="faults",
        after=stop_faults_stack,
    ),
    # ``alongside`` tests (self-contained, a minute or more: the consumer resilience,
    # authenticated-brokers and 20k-event relay tests) run here too: this run ends
    # ten minutes before the other two otherwise.
    Run(
        "kafka3+bench",
        ["tests", "-m", "kafka3 or bench or alongside"],
        env_of="cluster",
        after=stop_cluster,
    ),
    Run("unit", ["tests/unit"]),
]


def _step(
    title: str, command: list[str], env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    print(f"::: {title}: {' '.join(command[1:])}", flush=True)
    return subprocess.Popen(command, cwd=REPO, env={**os.environ, **(env or {})})


def build_jaeger() -> threading.Thread:
    """Build Jaeger (once per cache; niced, minutes of CPU on a fresh machine) in the
    background; the tracing tests' fixture waits for it on the build's lock."""

    def build() -> None:
        try:
            Jaeger(StackSettings()).binary()
        except StackError as err:
            # The tracing tests' fixture builds again and fails with this error there.
            print(f"::: jaeger build failed: {err}\n{err.detail}", flush=True)

    print("::: jaeger: building in the background", flush=True)
    thread = threading.Thread(target=build, name="jaeger-build", daemon=True)
    thread.start()
    return thread


def start_stacks() -> bool:
    """The cluster next to the main stack, and the faults stack, started side by side;
    then the faults stack's schema and the cluster tests' database."""
    started = [
        _step("cluster", [RELAYBUS, "stack", "up", "--kafka-nodes", "3"]),
        _step("faults stack", [RELAYBUS, "stack", "up"], FAULTS_STACK),
    ]
    if any(proc.wait() != 0 for proc in started):
        return False
    _recreate_cluster_database()
    migrated = [
        _step("faults stack", [RELAYBUS, "shop-db", "upgrade"], faults_clients()),
        _step("cluster database", [RELAYBUS, "shop-db", "upgrade"], cluster_clients()),
    ]
    return all(proc.wait() == 0 for proc in migrated)


def _pump(run: Run, proc: subprocess.Popen[str], lock: threading.Lock, begun: float) -> None:
    """Relay the run's output, named; its wall time ends with its output; then its
    ``after``."""
    assert proc.stdout is not None
    for line in proc.stdout:
        with lock:
            sys.stdout.write(f"[{run.name}] {line}")
            sys.stdout.flush()
    run.seconds = time.monotonic() - begun
    run.code = proc.wait()
    if run.after is not None:
        with lock:
            run.after()


def run_all(runs: list[Run], extra: list[str]) -> bool:
    lock = threading.Lock()
    procs: list[tuple[Run, subprocess.Popen[str], threading.Thread]] = []
    for run in runs:
        env = CLIENTS[run.env_of]() if run.env_of else {}
        command = [str(BIN / "pytest"), "-p", "no:cacheprovider", *run.args, *extra]
        print(f"::: {run.name}: {' '.join(command[1:])}", flush=True)
        proc = subprocess.Popen(
            command,
            cwd=REPO,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        pump = threading.Thread(target=_pump, args=(run, proc, lock, time.monotonic()))
        pump.start()
        procs.append((run, proc, pump))
    for _run, _proc, pump in procs:
        pump.join()
    # pytest's 5: nothing collected (a marker selecting nothing) is not a failure
    return all(run.code in (0, 5) for run in runs)


def main(extra: list[str]) -> int:
    os.chdir(REPO)  # the settings read .stack/secure/local.env from here
    began = time.monotonic()
    build_jaeger()
    try:
        ok = start_stacks()
        stacks = time.monotonic() - began
        ok = ok and run_all(RUNS, extra)
    finally:
        stop_faults_stack()
    print("\n::: runs (wall time; side by side, after the stacks started)")
    print(f"{'run':<16} {'seconds':>8}  result")
    print(f"{'(stacks up)':<16} {stacks:>8.0f}")
    for run in RUNS:
        result = "-" if run.code is None else "passed" if run.code in (0, 5) else "FAILED"
        print(f"{run.name:<16} {run.seconds:>8.0f}  {result}")
    print(f"{'total':<16} {time.monotonic() - began:>8.0f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
