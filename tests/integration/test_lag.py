"""``relaybus lag`` on the real stack: the Kafka figures agree with Kafka's own
``kafka-consumer-groups --describe``; RabbitMQ depths and the outbox backlog are
read; an unreachable source is reported, not a traceback."""

from __future__ import annotations

import json
import subprocess
import uuid

import aio_pika
import pytest

from relaybus.brokers import kafka_admin
from relaybus.brokers.kafka_admin import ensure_topic, produce_records, start_group_at
from relaybus.settings import Settings
from relaybus.stack.kafka_jars import kafka_libs
from relaybus.stack.settings import StackSettings
from tests.support.cli import run_cli
from tests.support.poll import eventually

Describe = dict[tuple[str, int], tuple[int, int, int]]


def kafka_consumer_groups(bootstrap: str, group: str) -> Describe:
    """Kafka's own tool, run from the stack's jars: (topic, partition) -> (current
    offset, log-end offset, lag) for ``group``."""
    stack = StackSettings()
    proc = subprocess.run(
        [
            "java",
            "-cp",
            str(kafka_libs(stack.cache_dir, stack.kafka_version) / "*"),
            "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
            "--bootstrap-server",
            bootstrap,
            "--describe",
            "--group",
            group,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows = {}
    for line in proc.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[0] == group:
            _, topic, partition, current, end, lag = fields[:6]
            rows[(topic, int(partition))] = (int(current), int(end), int(lag))
    return rows


async def test_kafka_lag_matches_kafka_consumer_groups(settings: Settings) -> None:
    run = uuid.uuid4().hex[:8]
    topic, group = f"t.lag.{run}", f"lag-{run}"
    await ensure_topic(settings.kafka_bootstrap, topic, 3)
    records = [(f"k{n}".encode(), b"{}", {}) for n in range(300)]
    await produce_records(settings.kafka_bootstrap, topic, records)  # ~100 per partition
    await start_group_at(settings.kafka_bootstrap, group, topic, {0: 10, 1: 50, 2: 0})

    proc = run_cli("lag", "--group", group, "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr
    ours = {
        (row["topic"], row["partition"]): (row["committed"], row["end"], row["lag"])
        for row in json.loads(proc.stdout)["kafka"]
    }
    theirs = kafka_consumer_groups(settings.kafka_bootstrap, group)
    assert ours == theirs
    assert sum(lag for _, _, lag in ours.values()) == 300 - 60
    # The table names the group too, and an unknown group is a one-line error.
    table = run_cli("lag", "--group", group, timeout=120)
    assert table.returncode == 0
    assert group in table.stdout
    missing = run_cli("lag", "--group", f"no-such-{run}", timeout=120)
    assert missing.returncode == 2
    assert "has no committed offsets" in missing.stderr
    assert "Traceback" not in missing.stderr + missing.stdout


async def test_lag_reads_queue_depths_and_the_outbox_backlog(settings: Settings) -> None:
    run = uuid.uuid4().hex[:8]
    queue = f"q.lag.{run}"
    connection = await aio_pika.connect_robust(settings.rabbitmq)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, durable=False, auto_delete=False)
        for n in range(5):
            await channel.default_exchange.publish(aio_pika.Message(f"{n}".encode()), queue)
        # Written to the outbox with no relay running: pending rows.
        published = run_cli(
            "publish", "lag.test", "--aggregate-type", "lag", "--key", f"lag-{run}", "--count", "7"
        )
        assert published.returncode == 0, published.stderr

        found: dict[str, object] = {}

        async def queue_counted() -> bool:
            proc = run_cli("lag", "--json", timeout=120)
            assert proc.returncode == 0, proc.stderr
            found.update(json.loads(proc.stdout))
            rows = [r for r in found["rabbitmq"] if r["queue"] == queue]  # type: ignore[attr-defined]
            return bool(rows and rows[0]["ready"] == 5)

        # The management API refreshes its counts every few seconds.
        await eventually(queue_counted, within=60, what="the queue's depth in relaybus lag")
        # No relay runs here: the per-partition figures add up to `outbox status`,
        # and the 7 rows of one key sit in one partition.
        status = json.loads(run_cli("outbox", "status", "--json").stdout)
        by_partition: list[dict[str, int]] = found["outbox"]  # type: ignore[assignment]
        assert sum(p["pending"] for p in by_partition) == status["pending"]
        assert sum(p["failed"] for p in by_partition) == status["failed"]
        assert max(p["pending"] for p in by_partition) >= 7
        assert found["errors"] == {}
        await declared.delete(if_unused=False, if_empty=False)
    finally:
        await connection.close()


def test_an_unreachable_source_is_reported_and_the_others_still_shown() -> None:
    proc = run_cli(
        "lag",
        "--json",
        env={"RELAYBUS_RABBITMQ_MANAGEMENT_URL": "http://admin:hunter2@127.0.0.1:1"},
        timeout=120,
    )
    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    assert "unreachable" in out["errors"]["rabbitmq"]
    assert "kafka" in out
    assert "outbox" in out
    assert "hunter2" not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


async def test_end_offsets_not_answered_in_time_are_shown_unknown_and_the_call_returns(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A topic whose end offsets do not come within ``END_OFFSETS_TIMEOUT`` (a leader
    not answering; here a timeout no broker can meet) is listed with ``end`` and ``lag``
    None, its committed offsets as Kafka has them, instead of failing the whole call."""
    run = uuid.uuid4().hex[:8]
    topic, group = f"t.lag.{run}", f"lag-{run}"
    await ensure_topic(settings.kafka_bootstrap, topic, 2)
    await produce_records(settings.kafka_bootstrap, topic, [(b"k", b"{}", {})] * 4)
    await start_group_at(settings.kafka_bootstrap, group, topic, {0: 0, 1: 0})
    monkeypatch.setattr(kafka_admin, "END_OFFSETS_TIMEOUT", 0.0)
    rows = await kafka_admin.consumer_lag(settings.kafka, group)
    assert [(r.topic, r.partition, r.committed, r.end, r.lag) for r in rows] == [
        (topic, 0, 0, None, None),
        (topic, 1, 0, None, None),
    ]
