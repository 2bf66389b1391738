"""Reading a trace from Jaeger's JSON into a timeline, and ``relaybus trace``'s refusals
(no service: the same command against Jaeger is in tests/tracing/test_order_trace.py)."""

from __future__ import annotations

from typing import Any

import pytest

from relaybus.tracing.jaeger_query import timeline
from tests.support.cli import invoke

TRACE = "a" * 32
OTHER = "b" * 32


def _span(
    span_id: str, name: str, start: int, duration: int, refs: list[Any], tags: Any = None
) -> Any:
    return {
        "traceID": TRACE,
        "spanID": span_id,
        "operationName": name,
        "references": refs,
        "startTime": start,
        "duration": duration,
        "processID": "p1" if name.startswith("publish") else "p2",
        "tags": [{"key": k, "type": "string", "value": v} for k, v in (tags or {}).items()],
    }


def test_a_trace_becomes_a_timeline_with_waits_parents_and_links() -> None:
    trace = {
        "traceID": TRACE,
        "processes": {"p1": {"serviceName": "relay"}, "p2": {"serviceName": "worker"}},
        "spans": [
            # Out of order, as Jaeger may send them.
            _span("02", "process t", 1_500, 300,
                  [{"refType": "FOLLOWS_FROM", "traceID": TRACE, "spanID": "01"}],
                  {"relaybus.outcome": "applied"}),
            _span("01", "publish t", 1_000, 200, []),
            _span("03", "dlq.replay t", 2_000, 10,
                  [{"refType": "FOLLOWS_FROM", "traceID": OTHER, "spanID": "09"}],
                  {"otel.status_code": "ERROR"}),
        ],
    }  # fmt: skip
    view = timeline(trace, "http://jaeger/trace/x")
    assert [s.name for s in view.spans] == ["publish t", "process t", "dlq.replay t"]
    publish, process, replay = view.spans
    assert (publish.depth, process.depth, replay.depth) == (0, 1, 0)
    # Jaeger keeps a consumer's parent-and-link as one FOLLOWS_FROM: both are read.
    assert process.parent_id == "01"
    assert [link.span_id for link in process.links] == ["01"]
    assert process.wait_us == 300  # began 300 µs after its parent ended
    assert (publish.start_us, process.start_us) == (0, 500)
    assert process.service == "worker"
    assert view.facts(process) == [("outcome", "applied")]
    # A link to another trace is a link, not a parent.
    assert replay.parent_id is None
    assert [link.trace_id for link in replay.links] == [OTHER]
    assert replay.failed
    assert view.duration_us == 1_010


def test_trace_without_a_store_says_which_setting_to_set() -> None:
    result = invoke("trace", "123", env={"RELAYBUS_TRACING_JAEGER_URL": ""})
    assert result.returncode == 2
    assert "RELAYBUS_TRACING_JAEGER_URL" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("ident", ["", "<script>", "x" * 65, "a b"])
def test_trace_refuses_an_id_that_is_none_of_the_three(ident: str) -> None:
    result = invoke("trace", ident, env={"RELAYBUS_TRACING_JAEGER_URL": "http://127.0.0.1:9"})
    assert result.returncode == 2
    assert "give a message id" in result.stderr


def test_trace_says_when_the_store_is_unreachable() -> None:
    result = invoke("trace", "123", env={"RELAYBUS_TRACING_JAEGER_URL": "http://127.0.0.1:9"})
    assert result.returncode == 1
    assert "unreachable" in result.stderr
    assert "Traceback" not in result.stderr
