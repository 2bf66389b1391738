"""Fixtures of the tracing tests: the stack's Jaeger (built once, started here) and
the OTEL_* environment that makes a relaybus process export to it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from relaybus import tracing
from relaybus.stack.jaeger import Jaeger
from relaybus.stack.settings import StackSettings
from relaybus.tracing import otel
from relaybus.tracing.jaeger_query import JaegerQuery


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
