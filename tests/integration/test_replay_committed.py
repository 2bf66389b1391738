"""Replay reads only committed data and always ends (issue 31 §2), on real Kafka: a
window holding an aborted transaction's records is copied without them (the saga's
topics are transactional), and a copy of a transactional topic with no ``--until``
ends although its last offsets are commit markers, never returned as records."""

from __future__ import annotations

import json
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from relaybus.brokers.kafka_admin import ensure_topic
from relaybus.settings import Settings
from tests.support.cli import run_cli


async def _transactions(bootstrap: str, topic: str) -> None:
    """committed a0 a1 · aborted b0 b1 · committed c0 (the log ends with its marker)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, transactional_id=f"test-{uuid.uuid4().hex[:8]}"
    )
    await producer.start()
    try:
        for name, count, commit in (("a", 2, True), ("b", 2, False), ("c", 1, True)):
            await producer.begin_transaction()
            for n in range(count):
                await producer.send_and_wait(topic, f"{name}{n}".encode(), key=b"k", partition=0)
            if commit:
                await producer.commit_transaction()
            else:
                await producer.abort_transaction()
    finally:
        await producer.stop()


async def _values(bootstrap: str, topic: str) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_uncommitted"
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek(tp, 0)
        end = (await consumer.end_offsets([tp]))[tp]
        values: list[bytes] = []
        while await consumer.position(tp) < end:
            batch = await consumer.getmany(tp, timeout_ms=1000)
            values += [r.value or b"" for r in batch.get(tp, [])]
        return values
    finally:
        await consumer.stop()


async def test_a_copy_leaves_aborted_records_out_and_ends_on_markers(settings: Settings) -> None:
    source, copy = (f"t.txn.{uuid.uuid4().hex[:8]}{s}" for s in ("", ".copy"))
    for topic in (source, copy):
        await ensure_topic(settings.kafka_bootstrap, topic, 1)
    await _transactions(settings.kafka_bootstrap, source)

    dry = run_cli("replay", source, "--since", "1h", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    (window,) = json.loads(dry.stdout)
    assert window["end"] == 8  # 5 records and 3 markers: the last offset is a marker

    # No --until: the copy must end at the marker it never sees (timeout = a hang).
    proc = run_cli("replay", source, "--since", "1h", "--to-topic", copy, "--yes", timeout=120)
    assert proc.returncode == 0, proc.stderr
    # Read uncommitted on purpose: the copy itself must hold no aborted record.
    assert await _values(settings.kafka_bootstrap, copy) == [b"a0", b"a1", b"c0"]
