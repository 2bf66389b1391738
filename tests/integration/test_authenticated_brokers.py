"""The stack's authenticated endpoints (Kafka SASL_SSL + SCRAM-SHA-512, RabbitMQ AMQPS
with a user limited to its vhost): refused without valid credentials; the relay,
workers, a stream processor and the operator commands work through settings alone;
the passwords never show in logs, process arguments, ``--json`` output or dead letters.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import aio_pika
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.brokers.kafka_admin import ensure_topic
from relaybus.brokers.kafka_connection import KafkaConnection
from relaybus.consumers.incoming import Incoming
from relaybus.consumers.naming import dlq_name
from relaybus.settings import Settings
from relaybus.stack.settings import StackSettings
from relaybus.streams.envelope import envelope
from relaybus.streams.runtime import Emit, KafkaStreamRunner
from relaybus.streams.runtime.processor import Result
from tests.support.cli import run_cli
from tests.support.consumer_apps import TEST_TYPE
from tests.support.consumerdata import effect_count, unique
from tests.support.outboxdata import Event, enqueue
from tests.support.poll import eventually
from tests.support.relayproc import FAST, RelaybusProcess

# ``alongside``: make test runs it in the kafka3+bench run (tests/phases.py).
pytestmark = [pytest.mark.usefixtures("effects_table"), pytest.mark.alongside]


def _client_env() -> dict[str, str]:
    """The RELAYBUS_* settings `relaybus stack up` wrote for its secure endpoints."""
    path = StackSettings().data_dir / "secure" / "client.env"
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            out[name] = value.strip("'")
    return out


@pytest.fixture
def secure_env() -> dict[str, str]:
    return _client_env()


@pytest.fixture
def secure(secure_env: dict[str, str]) -> Settings:
    fields = {name.removeprefix("RELAYBUS_").lower(): v for name, v in secure_env.items()}
    return Settings(**fields)  # type: ignore[arg-type]


def _secrets(secure: Settings) -> list[str]:
    password = secure.kafka_sasl_password
    assert password is not None
    rabbit = secure.rabbitmq.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    return [password.get_secret_value(), rabbit]


async def _kafka_refuses(
    connection: KafkaConnection, caplog: pytest.LogCaptureFixture, reason: str
) -> None:
    """``connection`` cannot start a producer, and aiokafka logged ``reason`` (its
    exception says only "Unable to bootstrap"; the log says why)."""
    caplog.clear()
    producer = AIOKafkaProducer(**connection.client_options(), request_timeout_ms=5000)
    with caplog.at_level(logging.WARNING, logger="aiokafka"):
        try:
            await producer.start()
        except KafkaConnectionError:
            pass
        else:
            raise AssertionError(f"Kafka let {connection!r} in")
        finally:
            await producer.stop()
    assert reason in caplog.text, caplog.text


async def test_kafka_refuses_clients_without_valid_credentials(
    secure: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    good = secure.kafka
    assert good.password
    assert good.cafile
    # The authenticated endpoint works with the right settings ...
    producer = AIOKafkaProducer(**good.client_options(), acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(f"t.secure.{uuid.uuid4().hex[:8]}", b"in")
    finally:
        await producer.stop()
    # ... and refuses everything else, each for its reason.
    bootstrap, ca, scram = good.bootstrap, good.cafile, "SCRAM-SHA-512"
    closed, denied = "closed", "SaslAuthenticationFailed"
    await _kafka_refuses(KafkaConnection(bootstrap), caplog, closed)  # plaintext
    await _kafka_refuses(KafkaConnection(bootstrap, "SSL", cafile=ca), caplog, closed)  # no login
    wrong = KafkaConnection(bootstrap, "SASL_SSL", scram, "relaybus", "nope", ca)
    await _kafka_refuses(wrong, caplog, denied)
    stranger = KafkaConnection(bootstrap, "SASL_SSL", scram, "mallory", good.password, ca)
    await _kafka_refuses(stranger, caplog, denied)
    # The stack's CA is not one of the system's: its certificate is not trusted.
    unverified = KafkaConnection(bootstrap, "SASL_SSL", scram, "relaybus", good.password)
    await _kafka_refuses(unverified, caplog, "CERTIFICATE_VERIFY_FAILED")
    with pytest.raises(ValueError, match="needs a username and a password"):
        KafkaConnection(bootstrap, "SASL_SSL", cafile=ca).client_options()
    # The password is not in the connection's repr or str (what a log line shows).
    assert good.password not in repr(good)
    assert good.password not in str(good)


async def _rabbit_refuses(url: str, reason: str) -> None:
    with pytest.raises((aio_pika.exceptions.AMQPError, OSError)) as refused:
        await aio_pika.connect(url, timeout=10)  # (a connection would fail the test)
    assert reason in f"{refused.type.__name__}: {refused.value}"


async def test_rabbitmq_refuses_clients_without_valid_credentials(secure: Settings) -> None:
    url = secure.rabbitmq
    connection = await aio_pika.connect(url, timeout=10)
    await connection.close()
    scheme_user, rest = url.split("@", 1)
    hostport, _, vhost_query = rest.partition("/")
    _, query = vhost_query.split("?", 1)
    user = scheme_user.split("://", 1)[1].split(":", 1)[0]
    await _rabbit_refuses(f"amqps://{user}:nope@{rest}", "ACCESS_REFUSED")
    # The user is limited to its vhost: the broker closes the connection on the
    # default one instead of opening it (aiormq reports the unexpected Close).
    await _rabbit_refuses(f"{scheme_user}@{hostport}/%2F?{query}", "Connection.Close")
    # Without the stack's CA the server's certificate is not trusted.
    await _rabbit_refuses(f"{scheme_user}@{hostport}/relaybus", "CERTIFICATE_VERIFY_FAILED")


class _Forward:
    """A stream processor that passes each record on (the runtime is what is tested)."""

    accepted_types = frozenset({"test.item"})

    def __init__(self, source: str, sink: str) -> None:
        self.name = f"secure-runner-{uuid.uuid4().hex[:8]}"
        self.inputs = (source,)
        self.sink = sink

    def output_topics(self) -> list[str]:
        return [self.sink]

    async def process(self, batch: Sequence[Incoming]) -> list[Result]:
        return [[Emit(self.sink, m.key.encode(), m.raw, [])] for m in batch]


async def test_a_stream_processor_runs_on_the_authenticated_cluster(secure: Settings) -> None:
    run = uuid.uuid4().hex[:8]
    source, sink = f"t.secure.{run}.in", f"t.secure.{run}.out"
    for topic in (source, sink):
        await ensure_topic(secure.kafka, topic, 2)
    producer = AIOKafkaProducer(**secure.kafka.client_options(), acks="all")
    await producer.start()
    try:
        for n in range(200):
            headers = envelope("test.item", f"k{n % 7}", str(uuid.uuid4()), None)
            await producer.send(source, json.dumps({"n": n}).encode(), key=b"k", headers=headers)
        await producer.flush()
    finally:
        await producer.stop()
    runner = KafkaStreamRunner(_Forward(source, sink), secure.kafka)  # type: ignore[arg-type]
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    consumer = AIOKafkaConsumer(
        sink, **secure.kafka.client_options(), auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    seen: list[int] = []
    try:

        async def all_forwarded() -> bool:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                seen.extend(json.loads(r.value)["n"] for r in records)
            return len(seen) >= 200

        await eventually(all_forwarded, within=90, what="200 records through the processor")
    finally:
        await consumer.stop()
        stop.set()
        await task
    assert sorted(seen) == list(range(200))


def _worker(
    env: dict[str, str], folder: Path, name: str, broker: str, source: str
) -> RelaybusProcess:
    """``relaybus worker`` running the recording test app on ``source``."""
    test_env = {
        "RELAYBUS_TEST_NAME": name,
        "RELAYBUS_TEST_BROKER": broker,
        "RELAYBUS_TEST_SOURCE": source,
        "RELAYBUS_TEST_BINDING": TEST_TYPE,
    }
    argv = ["worker", "tests.support.consumer_apps:effects"]
    return RelaybusProcess(name, {**env, **test_env}, folder / f"worker-{broker}.log", argv)


def _argv(process: RelaybusProcess) -> bytes:
    """What any user of the machine can read of the process: its command line."""
    assert process.proc is not None
    with open(f"/proc/{process.proc.pid}/cmdline", "rb") as fh:
        return fh.read()


async def test_relay_workers_and_operators_work_with_credentials_that_never_leak(
    secure: Settings, secure_env: dict[str, str], engine: AsyncEngine, tmp_path: Path
) -> None:
    aggregate = unique("secure")
    topic = f"{secure.kafka_topic_prefix}{aggregate}"
    await ensure_topic(secure.kafka, topic, 3)
    routes = [{"pattern": TEST_TYPE, "brokers": ["kafka", "rabbitmq"]}]
    env = {**secure_env, **FAST, "RELAYBUS_ROUTES": json.dumps(routes)}
    kafka_name, rabbit_name = unique("seck"), unique("secr")
    workers = {
        "kafka": _worker(env, tmp_path, kafka_name, "kafka", topic),
        "rabbitmq": _worker(env, tmp_path, rabbit_name, "rabbitmq", f"q.{rabbit_name}"),
    }
    relay = RelaybusProcess(unique("secrelay"), env, tmp_path / "relay.log")
    processes = [relay, *workers.values()]
    total = 300
    try:
        for worker in workers.values():
            worker.start()

        async def consuming() -> bool:
            return all("started" in w.log.read_text() for w in workers.values())

        await eventually(consuming, within=90, what="both workers started")
        relay.start()
        events = [Event(f"k{i % 11}", TEST_TYPE, {"n": i}) for i in range(total)]
        # One poison per broker: the handler refuses it as a schema error -> DLQ.
        events.append(Event("poison", TEST_TYPE, {"schema_error": True}))
        await enqueue(engine, aggregate, events)
        argv_seen = [_argv(p) for p in processes]

        async def applied() -> bool:
            counts = [(await effect_count(engine, n))[1] for n in (kafka_name, rabbit_name)]
            return counts == [total, total]

        await eventually(applied, within=180, what="every event applied from both brokers")
        letters: dict[str, list[dict[str, object]]] = {}
        for broker, source in (("kafka", topic), ("rabbitmq", f"q.{rabbit_name}")):

            async def dead_lettered(broker: str = broker, source: str = source) -> bool:
                listed = run_cli("dlq", "ls", "--broker", broker, "--json", env=secure_env)
                assert listed.returncode == 0, listed.stderr
                rows = json.loads(listed.stdout)
                return any(r["name"] == dlq_name(source) and r["messages"] for r in rows)

            await eventually(dead_lettered, within=90, what=f"{broker} poison dead-lettered")
            dlq = dlq_name(source)
            shown = run_cli("dlq", "show", dlq, "--broker", broker, "--json", env=secure_env)
            assert shown.returncode == 0, shown.stderr
            letters[broker] = json.loads(shown.stdout)
    finally:
        for p in processes:
            p.stop()
    # Exactly one message dead-lettered per broker: the poison, for its schema error.
    # Delivery is at least once (docs/guarantees.md), so a redelivered poison is
    # dead-lettered again under the same id (a worker redelivered before its commit
    # landed: the same original offset; the relay republishing: another one); a
    # replay applies it once (the inbox). Its origins are in the message to tell which.
    for broker, found in letters.items():
        origins = [
            (f["headers"].get("x-original-partition"), f["headers"].get("x-original-offset"))
            for f in found
            if isinstance(f["headers"], dict)
        ]
        assert found, f"{broker}: nothing dead-lettered"
        assert {(f["id"], f["reason"]) for f in found} == {(found[0]["id"], "schema")}, (
            broker,
            origins,
            letters,
        )
        assert json.loads(str(found[0]["body"])).get("schema_error") is True, letters
    status = run_cli("outbox", "status", "--json", env=secure_env)
    stack = run_cli("stack", "status", "--json")
    # Where a secret could leak: logs, argv, --json output, the dead letters.
    surfaces = {
        "logs": "\n".join(p.log.read_text() for p in processes),
        "argv": b"\n".join(argv_seen).decode(errors="replace"),
        "outbox status --json": status.stdout + status.stderr,
        "stack status --json": stack.stdout,
        "dead letters": json.dumps(letters),
    }
    for secret in _secrets(secure):
        for where, text in surfaces.items():
            assert secret not in text, f"a password appears in {where}"
    assert os.environ.get("RELAYBUS_KAFKA_SASL_PASSWORD") is None  # the test's own env is clean
