"""Kafka Connect standalone with Debezium's PostgreSQL connector and Outbox Event Router
(``relaybus stack up --debezium``): the change-data-capture peer of ``relaybus relay``."""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

from relaybus.stack.errors import StackError
from relaybus.stack.kafka_jars import LOG4J_CONFIG, debezium_libs
from relaybus.stack.procs import private_dir, read_pid, require_free_port, spawn, stop_pid, tail
from relaybus.stack.secure import SecureMaterial
from relaybus.stack.service import ServiceStatus
from relaybus.stack.settings import StackSettings

CONNECTOR = "relaybus-outbox"
MAIN = "org.apache.kafka.connect.cli.ConnectStandalone"


def worker_properties(s: StackSettings, offsets: Path) -> str:
    """The standalone worker: loopback REST, string keys and values (the payload stays
    the JSON text the writer stored), offsets in a local file."""
    return "\n".join(
        [
            f"bootstrap.servers={s.host}:{s.kafka_port}",
            "key.converter=org.apache.kafka.connect.storage.StringConverter",
            "value.converter=org.apache.kafka.connect.storage.StringConverter",
            f"offset.storage.file.filename={offsets}",
            "offset.flush.interval.ms=1000",
            f"listeners=http://{s.host}:{s.connect_port}",
            # Secrets through a config provider: the REST API (GET /connectors/<name>/
            # config) shows the ${file:…} reference, never the password.
            "config.providers=file",
            "config.providers.file.class="
            "org.apache.kafka.common.config.provider.FileConfigProvider",
            "",
        ]
    )


def connector_properties(s: StackSettings, secrets: Path) -> str:
    """Debezium's PostgreSQL connector on ``public.outbox`` with the outbox router.

    What a probe found to work (issue 16): pgoutput, a filtered publication, no
    snapshot, no tombstones, a short poll interval (the default adds ~0.5 s), the
    payload kept as text (``table.expand.json.payload`` fails on heterogeneous arrays
    and drops null fields), the relay's envelope columns placed as headers. The
    ``headers`` column travels as the ``relaybus-outbox-headers`` header, which
    relaybus consumers unpack (traceparent, correlation id, custom headers).
    """
    placement = ",".join(
        [
            "type:header:type",
            "aggregatetype:header:aggregatetype",
            "aggregateid:header:aggregateid",
            "timestamp:header:occurred_at",
            "headers:header:relaybus-outbox-headers",
        ]
    )
    return "\n".join(
        [
            f"name={CONNECTOR}",
            "connector.class=io.debezium.connector.postgresql.PostgresConnector",
            "tasks.max=1",
            f"database.hostname={s.host}",
            f"database.port={s.postgres_port}",
            f"database.user={s.postgres_user}",
            f"database.password=${{file:{secrets}:database.password}}",
            f"database.dbname={s.postgres_db}",
            "topic.prefix=relaybus",
            "plugin.name=pgoutput",
            f"slot.name={s.debezium_slot}",
            f"publication.name={s.debezium_slot}",
            "publication.autocreate.mode=filtered",
            "table.include.list=public.outbox",
            "snapshot.mode=no_data",
            "tombstones.on.delete=false",
            f"poll.interval.ms={s.debezium_poll_interval_ms}",
            "transforms=outbox",
            "transforms.outbox.type=io.debezium.transforms.outbox.EventRouter",
            "transforms.outbox.route.by.field=aggregatetype",
            f"transforms.outbox.route.topic.replacement={s.debezium_topic_prefix}"
            "${routedByValue}",
            f"transforms.outbox.table.fields.additional.placement={placement}",
            "transforms.outbox.table.op.invalid.behavior=warn",
            "",
        ]
    )


class KafkaConnect:
    """One Kafka Connect standalone worker running the ``relaybus-outbox`` connector.

    ``start`` fetches the jars on first use, writes the configuration (private to its
    owner: it holds the database password, never passed in argv), starts the JVM and
    waits until the connector's task reports RUNNING on the REST API.
    """

    name = "debezium"

    def __init__(self, settings: StackSettings) -> None:
        self.s = settings
        self.home = settings.data_dir / "debezium"
        self.pid_file = self.home / "connect.pid"
        self.log = self.home / "connect.log"

    @property
    def endpoint(self) -> str:
        return f"http://{self.s.host}:{self.s.connect_port}"

    def pid(self) -> int | None:
        return read_pid(self.pid_file)

    def start(self) -> None:
        if self.pid() is not None:
            return
        java = shutil.which("java")
        if java is None:
            raise StackError("debezium: no `java` on PATH (Kafka Connect 4 needs Java 17+)")
        require_free_port(self.s.host, self.s.connect_port, "debezium")
        libs = debezium_libs(self.s.cache_dir, self.s.kafka_version, self.s.debezium_version)
        private_dir(self.home)
        worker = self.home / "worker.properties"
        connector = self.home / "outbox-connector.properties"
        worker.write_text(worker_properties(self.s, self.home / "connect.offsets"))
        fd = os.open(connector, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(connector_properties(self.s, SecureMaterial(self.s).connect_secrets))
        offset = self.log.stat().st_size if self.log.exists() else 0
        argv = [
            java,
            f"-Xms{self.s.connect_heap}",
            f"-Xmx{self.s.connect_heap}",
            "-cp",
            f"{libs}/*",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            MAIN,
            str(worker),
            str(connector),
        ]
        spawn(argv, self.log, self.pid_file)
        self._wait_running(offset)

    def task_state(self) -> str | None:
        """The connector task's state from the REST API (RUNNING, FAILED, …), or None."""
        url = f"{self.endpoint}/connectors/{CONNECTOR}/status"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                status = json.load(resp)
        except (OSError, urllib.error.URLError, ValueError):
            return None
        tasks = status.get("tasks") or []
        return str(tasks[0].get("state")) if tasks else None

    def _wait_running(self, offset: int) -> None:
        deadline = time.monotonic() + self.s.start_timeout_s
        delay = 0.2
        while time.monotonic() < deadline:
            if self.pid() is None:
                raise StackError("debezium: Kafka Connect exited during start", tail(self.log))
            state = self.task_state()
            if state == "RUNNING":
                return
            if state == "FAILED":
                raise StackError("debezium: the connector task failed", tail(self.log, 60))
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)
        raise StackError("debezium: not running before the deadline", tail(self.log))

    def stop(self) -> bool:
        return stop_pid(self.pid_file)

    def status(self) -> list[ServiceStatus]:
        pid = self.pid()
        detail = f"connector {self.task_state() or '?'}" if pid else ""
        return [ServiceStatus(self.name, pid is not None, self.endpoint, pid, detail)]
