"""Apache Kafka in KRaft mode, from Maven Central jars: one node or a 3-node cluster."""

from __future__ import annotations

import base64
import hashlib
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from relaybus.stack.errors import StackError
from relaybus.stack.kafka_jars import LOG4J_CONFIG, kafka_libs
from relaybus.stack.procs import (
    port_open,
    private_dir,
    read_pid,
    require_free_port,
    run,
    spawn,
    stop_pids,
    tail,
)
from relaybus.stack.secure import KAFKA_USER, SecureMaterial, write_private
from relaybus.stack.service import ServiceStatus
from relaybus.stack.settings import StackSettings

READY_LINE = "Kafka Server started"


@dataclass(frozen=True)
class KafkaNode:
    """One KRaft process (broker + controller) with its own folder, ports and pid file."""

    node_id: int
    home: Path
    host: str
    broker_port: int
    controller_port: int

    @property
    def pid_file(self) -> Path:
        return self.home / "pid"

    @property
    def log(self) -> Path:
        return self.home / "kafka.log"

    @property
    def config(self) -> Path:
        return self.home / "server.properties"

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.broker_port}"

    def pid(self) -> int | None:
        return read_pid(self.pid_file)


def _properties(
    node: KafkaNode,
    quorum: str,
    replication: int,
    min_isr: int,
    secure: SecureListener | None,
    proxied: tuple[int, int] | None,
) -> str:
    listeners = f"PLAINTEXT://{node.host}:{node.broker_port},CONTROLLER://{node.host}:{node.controller_port}"
    advertised = listeners
    protocols = "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
    if secure is not None:
        listeners += f",SASL_SSL://{node.host}:{secure.port}"
        advertised += f",SASL_SSL://{node.host}:{secure.port}"
        protocols += ",SASL_SSL:SASL_SSL"
    if proxied is not None:
        # Listens on one port, advertises the proxy's: clients that came through
        # Toxiproxy are sent back through it for every broker connection.
        listen, via = proxied
        listeners += f",PROXIED://{node.host}:{listen}"
        advertised += f",PROXIED://{node.host}:{via}"
        protocols += ",PROXIED:PLAINTEXT"
    return "\n".join(
        [
            "process.roles=broker,controller",
            f"node.id={node.node_id}",
            quorum,
            f"listeners={listeners}",
            f"advertised.listeners={advertised}",
            "controller.listener.names=CONTROLLER",
            f"listener.security.protocol.map={protocols}",
            "inter.broker.listener.name=PLAINTEXT",
            f"log.dirs={node.home / 'data'}",
            "num.partitions=1",
            f"default.replication.factor={replication}",
            f"min.insync.replicas={min_isr}",
            f"offsets.topic.replication.factor={replication}",
            f"transaction.state.log.replication.factor={replication}",
            f"transaction.state.log.min.isr={min_isr}",
            f"share.coordinator.state.topic.replication.factor={replication}",
            f"share.coordinator.state.topic.min.isr={min_isr}",
            # Tests and the demo start consumer groups often; don't wait 3 s per rebalance.
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=true",
            *(_FAILURE_DETECTION if replication > 1 else []),
            *(secure.properties() if secure is not None else []),
            "",
        ]
    )


@dataclass(frozen=True)
class SecureListener:
    """A SASL_SSL listener: TLS with the stack's certificate, SCRAM-SHA-512 logins.

    Only clients with a SCRAM user of this cluster get in; the plaintext listener
    stays for the local dev tools (it is on loopback like everything else).
    """

    port: int
    keystore: Path  # PEM: private key + certificate chain

    def properties(self) -> list[str]:
        prefix = "listener.name.sasl_ssl"
        return [
            "sasl.enabled.mechanisms=SCRAM-SHA-512",
            f"{prefix}.sasl.enabled.mechanisms=SCRAM-SHA-512",
            f"{prefix}.scram-sha-512.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            f"{prefix}.ssl.keystore.type=PEM",
            f"{prefix}.ssl.keystore.location={self.keystore}",
        ]


# The 3-node cluster's failure detection (docs/guarantees.md). With acks=all a write
# waits for every in-sync replica, so a frozen or dead *follower* holds back every
# partition it follows until it leaves the ISR: after replica.lag.time.max.ms without
# fetching (Kafka's default 30 s), or when the controller fences its broker for missing
# heartbeats (broker.session.timeout.ms, default 9 s), which also elects new leaders
# for the partitions it led. Shorter, so one broker's loss stalls writes for seconds,
# not tens of seconds; not so short that a follower a loaded machine delays for a
# moment flaps in and out of the ISR (min ISR 2 of 3: one such follower is harmless).
_FAILURE_DETECTION = [
    "replica.lag.time.max.ms=4000",
    "broker.session.timeout.ms=6000",
    "broker.heartbeat.interval.ms=1000",
]


class KafkaCluster:
    """``nodes`` KRaft processes (combined broker + controller) forming one cluster.

    With one node it runs as a standalone (dynamic quorum) controller; with three,
    a static voter set ``1@…,2@…,3@…``, replication factor 3 and min ISR 2, so
    acks=all writes survive the loss of one broker.
    """

    def __init__(
        self,
        settings: StackSettings,
        name: str,
        home: Path,
        nodes: list[KafkaNode],
        secure: SecureMaterial | None = None,
        proxied: tuple[int, int] | None = None,
    ):
        """``secure`` adds the SASL_SSL listener; ``proxied`` = (listen port, the
        Toxiproxy port it is advertised at) adds the PROXIED listener."""
        self.s = settings
        self.name = name
        self.home = home
        self.nodes = nodes
        self.secure = secure
        self.proxied = proxied
        self.listener = (
            SecureListener(settings.kafka_secure_port, secure.kafka_keystore) if secure else None
        )

    @classmethod
    def single(cls, s: StackSettings) -> KafkaCluster:
        """The dev broker: plaintext on ``kafka_port``, SASL_SSL on ``kafka_secure_port``,
        PROXIED behind Toxiproxy."""
        home = s.data_dir / "kafka"
        node = KafkaNode(1, home, s.host, s.kafka_port, s.kafka_controller_port)
        # Only the dev node is reachable through Toxiproxy (the fault matrix's S6).
        proxied = (s.kafka_proxied_upstream_port, s.kafka_proxied_port)
        return cls(s, "kafka", home, [node], SecureMaterial(s), proxied)

    @classmethod
    def three_nodes(cls, s: StackSettings) -> KafkaCluster:
        home = s.data_dir / "kafka-cluster"
        base = s.kafka_cluster_base_port
        # 19092, 19192, 19292 (controllers +1): below the kernel's ephemeral range
        # (32768+), where a client's outgoing connection could hold the port a node
        # is about to bind (node 3 used to listen on 39092 and once failed so).
        ports = [base + 10000 + 100 * (i - 1) for i in (1, 2, 3)]
        nodes = [
            KafkaNode(i, home / f"node-{i}", s.host, port, port + 1)
            for i, port in zip((1, 2, 3), ports, strict=True)
        ]
        return cls(s, "kafka-cluster", home, nodes)

    @property
    def bootstrap(self) -> str:
        return ",".join(n.endpoint for n in self.nodes)

    def _java(self) -> str:
        java = shutil.which("java")
        if java is None:
            raise StackError("kafka: no `java` on PATH (Kafka 4 needs Java 17+)")
        return java

    def _classpath(self) -> str:
        return str(kafka_libs(self.s.cache_dir, self.s.kafka_version) / "*")

    def _jvm(self, main: str, *args: str, heap: str | None = None) -> list[str]:
        argv = [self._java()]
        if heap:
            argv += [f"-Xms{heap}", f"-Xmx{heap}"]
        return [
            *argv,
            "-cp",
            self._classpath(),
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            main,
            *args,
        ]

    def _format(self) -> None:
        """Write each node's config and format its storage once (KRaft needs it)."""
        cluster_id_file = self.home / "cluster.id"
        private_dir(self.home)
        if not cluster_id_file.exists():
            # Kafka's cluster ids are 16 random bytes in URL-safe base64 without padding.
            raw = uuid.uuid4().bytes
            cluster_id_file.write_text(base64.urlsafe_b64encode(raw).decode().rstrip("="))
        cluster_id = cluster_id_file.read_text().strip()
        clustered = len(self.nodes) > 1
        if clustered:
            voters = ",".join(f"{n.node_id}@{n.host}:{n.controller_port}" for n in self.nodes)
            quorum = f"controller.quorum.voters={voters}"
        else:
            n = self.nodes[0]
            quorum = f"controller.quorum.bootstrap.servers={n.host}:{n.controller_port}"
        replication, min_isr = (3, 2) if clustered else (1, 1)
        for node in self.nodes:
            private_dir(node.home)
            node.config.write_text(
                _properties(node, quorum, replication, min_isr, self.listener, self.proxied)
            )
            if (node.home / "data" / "meta.properties").exists():
                continue
            # "--cluster-id=<id>" in one argument: a URL-safe base64 id may start with
            # "-" (1 in 32), which the tool's argument parser would take for an option.
            args = ["format", f"--cluster-id={cluster_id}", "-c", str(node.config)]
            if not clustered:
                args.append("--standalone")
            run(self._jvm("kafka.tools.StorageTool", *args), f"{self.name}: storage format")

    def start(self) -> None:
        """Start the nodes that are not running, then wait until each logged it started."""
        to_start = [n for n in self.nodes if n.pid() is None]
        if to_start:
            self._start(to_start)
        if self.secure is not None:
            self._ensure_scram_user(self.secure)

    def _start(self, to_start: list[KafkaNode]) -> None:
        for node in to_start:
            require_free_port(node.host, node.broker_port, f"{self.name} node {node.node_id}")
            require_free_port(node.host, node.controller_port, f"{self.name} node {node.node_id}")
            if self.listener is not None:
                require_free_port(node.host, self.listener.port, f"{self.name} SASL_SSL")
            if self.proxied is not None:
                require_free_port(node.host, self.proxied[0], f"{self.name} PROXIED")
        if self.secure is not None:
            self.secure.ensure()
        self._format()
        offsets: dict[int, int] = {}
        for node in to_start:
            offsets[node.node_id] = node.log.stat().st_size if node.log.exists() else 0
            spawn(
                self._jvm("kafka.Kafka", str(node.config), heap=self.s.kafka_heap),
                node.log,
                node.pid_file,
            )
        # All nodes first, then wait: controllers need a quorum before any broker starts.
        deadline = time.monotonic() + self.s.start_timeout_s
        for node in to_start:
            self._wait_started(node, offsets[node.node_id], deadline)

    def _ensure_scram_user(self, secure: SecureMaterial) -> None:
        """Create (or reset) the SCRAM-SHA-512 user over the plaintext listener. The
        password goes in a 0600 file (``--add-config-file``), never on the argv."""
        marker = self.home / "scram-user"  # a digest of the password it was set to
        password = secure.credentials().kafka_password
        digest = hashlib.sha256(password.encode()).hexdigest()
        if marker.exists() and marker.read_text() == digest:
            return
        config = secure.home / "kafka-scram.properties"
        # From a file the value is taken as is: no [brackets] as on the command line.
        write_private(config, f"SCRAM-SHA-512=iterations=8192,password={password}\n")
        try:
            run(
                self._jvm(
                    "kafka.admin.ConfigCommand",
                    "--bootstrap-server", self.nodes[0].endpoint,
                    "--alter", "--entity-type", "users", "--entity-name", KAFKA_USER,
                    "--add-config-file", str(config),
                ),
                f"{self.name}: SCRAM user",
            )  # fmt: skip
        except StackError as err:
            # The tool echoes a rejected line, password included: never print it.
            raise StackError(str(err), err.detail.replace(password, "***")) from None
        finally:
            config.unlink(missing_ok=True)
        write_private(marker, digest)

    def _wait_started(self, node: KafkaNode, offset: int, deadline: float) -> None:
        what = f"{self.name} node {node.node_id}"
        delay = 0.1
        while time.monotonic() < deadline:
            if node.pid() is None:
                raise StackError(f"{what}: the broker exited during start", tail(node.log))
            with node.log.open("rb") as fh:
                fh.seek(offset)
                if READY_LINE.encode() in fh.read() and port_open(node.host, node.broker_port):
                    return
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)
        raise StackError(f"{what}: not ready before the deadline", tail(node.log))

    def stop(self) -> bool:
        """SIGTERM every running node at once (controlled shutdown), SIGKILL stragglers."""
        return bool(stop_pids([n.pid_file for n in self.nodes]))

    def status(self) -> list[ServiceStatus]:
        out = []
        for node in self.nodes:
            pid = node.pid()
            name = self.name if len(self.nodes) == 1 else f"{self.name}-{node.node_id}"
            detail = "KRaft"
            if self.listener is not None:
                detail += f"; SASL_SSL (SCRAM-SHA-512) {node.host}:{self.listener.port}"
            out.append(ServiceStatus(name, pid is not None, node.endpoint, pid, detail))
        return out
