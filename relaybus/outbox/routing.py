"""Which broker(s) an event type goes to: configuration, not code."""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from relaybus.settings import Route


class Router:
    """First matching route wins; a type no route matches goes nowhere and is refused.

    Patterns are shell-style (``order.*``, ``*``) matched against the event ``type``.
    """

    def __init__(self, routes: Sequence[Route]) -> None:
        self._routes = list(routes)
        self._memo: dict[str, tuple[str, ...]] = {}  # event types are few; asked per row

    def brokers_for(self, event_type: str) -> tuple[str, ...]:
        found = self._memo.get(event_type)
        if found is None:
            found = next(
                (
                    tuple(dict.fromkeys(r.brokers))
                    for r in self._routes
                    if fnmatchcase(event_type, r.pattern)
                ),
                (),
            )
            self._memo[event_type] = found
        return found

    def all_brokers(self) -> set[str]:
        return {b for r in self._routes for b in r.brokers}
