"""Workers' Prometheus metrics on the real stack: ``relaybus worker --metrics-port``
serves handled / duplicate / dead-lettered counts and the handler latency histogram
for what it really consumed; the breaker gauge follows an open and closed breaker."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import uuid
from urllib.request import urlopen

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.brokers.kafka_admin import ensure_topic
from relaybus.consumers.breaker import CircuitBreaker
from relaybus.consumers.metrics import WorkerMetrics
from relaybus.consumers.policy import RetryPolicy
from relaybus.consumers.worker import Worker
from relaybus.settings import Settings
from tests.support.cli import REPO
from tests.support.consumer_apps import Switches, make_app
from tests.support.consumerdata import event, kafka_send, prepare_effects, unique
from tests.support.poll import eventually


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``: (name, sorted labels) -> value."""
    with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        body = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


async def samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    try:
        return await asyncio.to_thread(scrape, port)
    except OSError:
        return {}


def count(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_a_worker_process_serves_its_counts_and_latency(
    settings: Settings, engine: AsyncEngine
) -> None:
    await prepare_effects(engine)
    name = unique("metered")
    topic = f"t.metrics.{uuid.uuid4().hex[:8]}"
    await ensure_topic(settings.kafka_bootstrap, topic, 1)
    port = free_port()
    script = os.path.join(os.path.dirname(sys.executable), "relaybus")
    env = {
        **os.environ,
        "RELAYBUS_TEST_NAME": name,
        "RELAYBUS_TEST_BROKER": "kafka",
        "RELAYBUS_TEST_SOURCE": topic,
    }
    proc = await asyncio.create_subprocess_exec(
        script, "worker", "tests.support.consumer_apps:effects", "--metrics-port", str(port),
        cwd=REPO, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        same = uuid.uuid4()
        records = [event(f"k{i}", {"n": i}) for i in range(10)]
        records += [event("d", {"n": 1}, id=same), event("d", {"n": 1}, id=same)]
        records.append(event("bad", {"schema_error": True}))
        await kafka_send(settings.kafka_bootstrap, topic, records)
        handler = {"handler": name}

        async def counted() -> bool:
            found = await samples(port)
            return (
                count(found, "relaybus_worker_messages_total", **handler, outcome="handled") == 11
                and count(found, "relaybus_worker_messages_total", **handler, outcome="duplicate")
                == 1
                and count(
                    found, "relaybus_worker_messages_total", **handler, outcome="dead-lettered"
                )
                == 1
            )

        await eventually(counted, within=120, what="the worker's counts served")
        found = await samples(port)
        # Every delivery ran the handler path once: 11 applied, 1 duplicate, 1 invalid.
        assert count(found, "relaybus_worker_handler_seconds_count", **handler) == 13
        assert count(found, "relaybus_worker_handler_seconds_bucket", **handler, le="+Inf") == 13
        assert count(found, "relaybus_worker_messages_total", **handler, outcome="retried") == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0


async def test_the_breaker_gauge_follows_the_breaker(
    settings: Settings, engine: AsyncEngine
) -> None:
    await prepare_effects(engine)
    name = unique("breakermetrics")
    topic = f"t.metrics.{uuid.uuid4().hex[:8]}"
    await ensure_topic(settings.kafka_bootstrap, topic, 1)
    switches = Switches()
    switches.dependency_up = False
    breaker = CircuitBreaker("payments", failure_threshold=1, reset_timeout=0.5)
    app = make_app(
        name,
        broker="kafka",
        topic_or_queue=topic,
        switches=switches,
        breaker=breaker,
        concurrency=1,
        retry=RetryPolicy(max_attempts=50, initial_delay=0.1, max_delay=0.2),
    )
    metrics = WorkerMetrics()
    port = free_port()
    metrics.serve(port)
    worker = Worker(app, settings, metrics)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await kafka_send(settings.kafka_bootstrap, topic, [event("k", {"dependency": True})])

        async def state_is(value: float) -> bool:
            found = await samples(port)
            return count(found, "relaybus_worker_breaker_state", handler=name) == value

        await eventually(lambda: state_is(2.0), within=60, what="breaker open in the gauge")
        switches.dependency_up = True
        await eventually(lambda: state_is(0.0), within=60, what="breaker closed in the gauge")
        found = await samples(port)
        assert count(found, "relaybus_worker_messages_total", handler=name, outcome="handled") == 1
        assert (
            count(found, "relaybus_worker_messages_total", handler=name, outcome="breaker-paused")
            >= 1
        )
    finally:
        stop.set()
        await asyncio.wait_for(task, 90)
