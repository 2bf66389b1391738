"""Fixtures of the tracing tests: the stack's Jaeger (built once, started here) and
the OTEL_* environment that makes a relaybus process export to it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from relaybus import tracing
from relaybus.stack.jaeger import Jaeger
from relaybus.stack.settings import StackSettings
from relaybus.tracing import otel
from relaybus.tracing.jaeger_query import JaegerQuery

HERE = Path(__file__).resolve().parent
# The first test here starts Jaeger, and under `make test` may wait for the build that
# began in the background with the run (~12 minutes of niced CPU on a fresh machine):
# the usual 300 s per test would cut that wait short. The tests themselves wait on
# deadlines of their own (``eventually``).
BUILD_WAIT = 1800


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.timeout(BUILD_WAIT), append=False)


@pytest.fixture(scope="session")
def jaeger() -> Jaeger:
    """The stack's Jaeger, started if it is not running (``relaybus stack down`` stops
    it with the rest)."""
    found = Jaeger(StackSettings())
    found.start()
    return found


@pytest.fixture(scope="session")
def traced_env(jaeger: Jaeger) -> dict[str, str]:
    """What a relaybus process needs to export every span to the stack's Jaeger, soon
    (the batch processor's 5 s default delay shortened: tests read traces back)."""
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
    }


@pytest.fixture
def query(jaeger: Jaeger) -> JaegerQuery:
    return JaegerQuery(jaeger.query_url)


@pytest.fixture
def traced_here(traced_env: dict[str, str], request: pytest.FixtureRequest) -> Iterator[None]:
    """This test process's own spans (in-process workers, writers) exported to Jaeger
    as service ``tests-<test name>``."""
    tracer = otel.build(f"tests-{request.node.name}"[:60], traced_env)
    tracing.install(tracer)
    try:
        yield
    finally:
        tracing.install(None)
        tracer.shutdown()  # flushes what is queued
