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

    def brokers_for(self, event_type: str) -> tuple[str, ...]:
        for route in self._routes:
            if fnmatchcase(event_type, route.pattern):
                return tuple(dict.fromkeys(route.brokers))
        return ()

    def all_brokers(self) -> set[str]:
        return {b for r in self._routes for b in r.brokers}
