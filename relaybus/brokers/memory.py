"""An in-memory ``Publisher`` for fast tests of the relay (no broker)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from relaybus.brokers.publisher import DEFERRED, PUBLISHED, Outcome, PublishError
from relaybus.brokers.stalls import Stall
from relaybus.message import Message


class InMemoryPublisher:
    """``Publisher`` that appends to ``sent`` (in call order, so per key in order).

    ``refuse(message)`` returns an error text for a message the "broker" refuses for
    good (like an oversize or unroutable one): later messages of its key in the same
    call are deferred, as the real adapters do. ``down = True`` makes every call
    raise ``PublishError``, like a broker outage. ``freeze(key)`` makes the key's
    messages come back deferred, as behind a Kafka partition whose leader stalls
    (``stalls()`` reports one per frozen key) until ``thaw(key)``.
    """

    def __init__(
        self, name: str = "memory", refuse: Callable[[Message], str | None] | None = None
    ) -> None:
        self.name = name
        self.sent: list[Message] = []
        self.down = False
        self.started = False
        self._refuse = refuse or (lambda _m: None)
        self._frozen: dict[str, float] = {}
        self.deferred_calls = 0  # publish calls that deferred something for a frozen key

    def freeze(self, key: str) -> None:
        self._frozen.setdefault(key, time.time())

    def thaw(self, key: str) -> None:
        self._frozen.pop(key, None)

    def stalls(self) -> list[Stall]:
        return [Stall(self.name, key, "memory", since, 0) for key, since in self._frozen.items()]

    async def start(self) -> None:
        if self.down:
            raise PublishError(f"{self.name} unavailable")
        self.started = True

    async def stop(self) -> None:
        self.started = False

    async def publish(self, messages: Sequence[Message]) -> list[Outcome]:
        if self.down or not self.started:
            raise PublishError(f"{self.name} unavailable")
        outcomes: list[Outcome] = []
        refused: set[str] = set()
        if any(m.aggregateid in self._frozen for m in messages):
            self.deferred_calls += 1
        for m in messages:
            if m.aggregateid in refused or m.aggregateid in self._frozen:
                outcomes.append(DEFERRED)
            elif (error := self._refuse(m)) is not None:
                refused.add(m.aggregateid)
                outcomes.append(Outcome(error=error))
            else:
                self.sent.append(m)
                outcomes.append(PUBLISHED)
        return outcomes
