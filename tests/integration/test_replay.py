"""``relaybus replay --dry-run`` on real Kafka: the window it reports per partition
(offsets, count, first and last timestamps) is exactly the records produced with
timestamps in it; bad times and options are one-line errors."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer

from relaybus.brokers.kafka_admin import ensure_topic
from relaybus.settings import Settings
from tests.support.cli import run_cli

RECORDS = 600


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


async def test_a_dry_run_reports_exactly_the_window(settings: Settings) -> None:
    topic = f"t.replay.{uuid.uuid4().hex[:8]}"
    await ensure_topic(settings.kafka_bootstrap, topic, 3)
    base = int(time.time() * 1000) - 3_600_000  # an hour ago, one record a second
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    placed: dict[int, list[int]] = {}  # partition -> record numbers, in offset order
    try:
        for n in range(RECORDS):
            sent = await producer.send_and_wait(
                topic, b"{}", key=f"k{n % 7}".encode(), timestamp_ms=base + n * 1000
            )
            placed.setdefault(sent.partition, []).append(n)
    finally:
        await producer.stop()
    since, until = base + 100_000, base + 400_000  # records 100 … 399

    proc = run_cli(
        "replay", topic, "--since", iso(since), "--until", iso(until), "--dry-run", "--json"
    )
    assert proc.returncode == 0, proc.stderr
    got = {w["partition"]: w for w in json.loads(proc.stdout)}
    for partition, numbers in placed.items():
        inside = [i for i, n in enumerate(numbers) if 100 <= n < 400]
        window = got[partition]
        assert (window["start"], window["end"]) == (inside[0], inside[-1] + 1)
        assert window["count"] == len(inside)
        assert window["first_timestamp"] == base + numbers[inside[0]] * 1000
        assert window["last_timestamp"] == base + numbers[inside[-1]] * 1000
    assert sum(w["count"] for w in got.values()) == 300

    # A relative start: everything of the last day, up to now.
    proc = run_cli("replay", topic, "--since", "1d", "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    assert sum(w["count"] for w in json.loads(proc.stdout)) == RECORDS

    # The table says it changed nothing.
    table = run_cli("replay", topic, "--since", "2h", "--dry-run")
    assert "nothing changed" in table.stdout


def test_bad_times_and_options_are_one_line_errors() -> None:
    missing = f"no.such.{uuid.uuid4().hex[:6]}"
    for args, expected in (
        (("replay", "t", "--since", "yesterday", "--dry-run"), "is not a time"),
        (("replay", "t", "--since", "1h", "--until", "2h", "--dry-run"), "later than --since"),
        (("replay", "t", "--since", "1h"), "say what to do"),
        (("replay", "--since", "1h", "--dry-run"), "give the topic"),
        (("replay", "t", "--until", "1h", "--dry-run"), "give the start of the window"),
        (("replay", "t", "--since", "1h", "--group", "g", "--to-topic", "u"), "choose one"),
        (("replay", "t", "--since", "1h", "--group", "g", "--type", "x"), "go with --to-topic"),
        (("replay", "t", "--since", "1h", "--to-topic", "t"), "needs --reprocess"),
        (("replay", "t", "--to-topic", "u", "--resume", "--since", "1h"), "leave out --since"),
        (("replay", "--undo", "1", "--group", "g"), "takes no other action"),
        (("replay", "--undo", "999999999"), "no audit row 999999999"),
        (("replay", "t", "--since", "1h", "--broker", "rabbitmq", "--group", "g"), "archive"),
        (("replay", "t", "--since", "1h", "--broker", "rabbitmq", "--dry-run"), "exchange"),
        (("replay", missing, "--since", "1h", "--dry-run"), "does not exist"),
        (("replay", "t", "--since", "1h", "--to-topic", missing, "--yes"), "does not exist"),
    ):
        proc = run_cli(*args, timeout=120)
        assert proc.returncode == 2, (args, proc.stderr)
        assert expected in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr + proc.stdout
