"""Reading a test's traces back from Jaeger."""

from __future__ import annotations

from collections.abc import Callable

from relaybus import tracing
from relaybus.cli.trace import stories
from relaybus.tracing import otel
from relaybus.tracing.jaeger_query import JaegerQuery, SpanRow, TraceView
from tests.support.poll import eventually


def flush() -> None:
    """Export this process's finished spans now."""
    current = tracing.tracer()
    if isinstance(current, otel.OtelTracer):
        current.force_flush()


async def stories_of(
    query: JaegerQuery, ident: str, enough: Callable[[list[TraceView]], bool], within: float = 60
) -> list[TraceView]:
    """The traces holding ``ident`` (message or order id) once ``enough`` says they are
    complete (spans reach Jaeger from several processes, each in its own time)."""
    found: list[TraceView] = []

    async def complete() -> bool:
        nonlocal found
        found = await stories(query, ident)
        return enough(found)

    try:
        await eventually(complete, within=within, what=f"the traces of {ident}")
    except AssertionError:
        shown = [[(s.service, s.name) for s in v.spans] for v in found]
        raise AssertionError(f"traces of {ident} incomplete: {shown}") from None
    return found


def spans_named(views: list[TraceView], prefix: str) -> list[tuple[TraceView, SpanRow]]:
    """Every span whose name starts with ``prefix``, with its trace."""
    return [(v, s) for v in views for s in v.spans if s.name.startswith(prefix)]
