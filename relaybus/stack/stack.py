"""The stack as a whole: which services, in which order, with what error reporting."""

from __future__ import annotations

from relaybus.stack.debezium import KafkaConnect
from relaybus.stack.debian import ensure_packages
from relaybus.stack.errors import StackError
from relaybus.stack.jaeger import Jaeger
from relaybus.stack.kafka_broker import KafkaCluster
from relaybus.stack.postgres import Postgres
from relaybus.stack.rabbitmq import RabbitMQ
from relaybus.stack.redis import RedisInstances
from relaybus.stack.service import Service, ServiceStatus
from relaybus.stack.settings import StackSettings
from relaybus.stack.toxiproxy import Toxiproxy


class Stack:
    """Kafka, RabbitMQ, PostgreSQL, Redis and Toxiproxy (plus, on request, a 3-node
    Kafka cluster and Debezium).

    ``up`` installs missing Debian packages, then starts each service that is not
    running and waits for its readiness probe; it is idempotent. ``down`` stops only
    processes this stack started, by their recorded pids; it is idempotent too.
    """

    def __init__(self, settings: StackSettings | None = None) -> None:
        self.settings = settings or StackSettings()
        s = self.settings
        self.postgres = Postgres(s)
        self.core: list[Service] = [
            self.postgres,
            RedisInstances(s),
            RabbitMQ(s),
            KafkaCluster.single(s),
        ]
        self.toxiproxy = Toxiproxy(s)
        self.cluster = KafkaCluster.three_nodes(s)
        self.debezium = KafkaConnect(s)
        self.jaeger = Jaeger(s)

    def up(
        self,
        kafka_nodes: int = 1,
        install: bool = True,
        debezium: bool = False,
        tracing: bool = False,
    ) -> list[str]:
        """Start everything; return the Debian packages that had to be installed.

        ``debezium`` also starts Kafka Connect with Debezium on the outbox table, which
        must exist by then (``relaybus db upgrade``). ``tracing`` also builds (once)
        and starts Jaeger (docs/tracing.md).
        """
        if kafka_nodes not in (1, 3):
            raise StackError(f"--kafka-nodes must be 1 or 3, not {kafka_nodes}")
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        installed = ensure_packages() if install else []
        services = [*self.core, self.cluster] if kafka_nodes == 3 else self.core
        for service in services:
            service.start()
        # Network faults are for the fault matrix: without Go to build Toxiproxy the
        # rest of the stack still runs (status shows it down, S6 says why it fails).
        if self.toxiproxy.buildable():
            self.toxiproxy.start()
        if debezium:
            if not self.postgres.has_table("outbox"):
                raise StackError(
                    "debezium: the outbox table does not exist yet; run `relaybus db upgrade`, "
                    "then `relaybus stack up --debezium` again"
                )
            self.debezium.start()
        if tracing:
            self.jaeger.start()
        return installed

    def down(self) -> list[str]:
        """Stop every service of ours that runs; return the names of those stopped."""
        stopped = []
        services: list[Service] = [
            self.jaeger,
            self.debezium,
            self.toxiproxy,
            self.cluster,
            *reversed(self.core),
        ]
        for service in services:
            if service.stop():
                stopped.append(service.name)
        return stopped

    def status(self) -> list[ServiceStatus]:
        """One row per process: core services always, cluster nodes when any runs."""
        rows = [row for service in [*self.core, self.toxiproxy] for row in service.status()]
        optionals: list[Service] = [self.cluster, self.debezium, self.jaeger]
        for optional in optionals:
            extra = optional.status()
            if any(r.running for r in extra):
                rows += extra
        return rows
