"""Sends a broker has not acknowledged in time: deferred, remembered, reported.

A publisher that waits on every send of a call stalls the whole call when one of
its destinations (a Kafka partition whose leader died or froze) stops answering,
and with it every other destination in the call. ``LateSends`` lets it stop waiting
after ``stall_after`` seconds instead: the unanswered sends become *late* (the
caller gets ``deferred`` and republishes the rows later), are remembered by message
id, and answer for themselves when the same message is published again: published
if the broker acknowledged it meanwhile (so nothing is sent twice), sent again if it
failed. Until a destination's late sends are answered, new sends to it are deferred
without sending (the broker client would only queue them behind the stuck ones).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Hashable
from dataclasses import dataclass

log = logging.getLogger(__name__)

# A late send answered long ago whose message was never published again (another
# relay took its partition) is forgotten after this long.
FORGET_ANSWERED_AFTER = 600.0


@dataclass(frozen=True)
class Stall:
    """A destination with sends unanswered for longer than the publisher waits.

    ``destination`` names it for operators (``orders[3]``: topic and partition),
    ``leader`` is where the broker client sends it (``node 3 at 127.0.0.1:19292``),
    ``since`` the wall-clock time (epoch seconds) of its oldest unanswered send,
    ``waiting`` how many sends are unanswered.
    """

    broker: str
    destination: str
    leader: str
    since: float
    waiting: int

    def seconds(self, now: float | None = None) -> float:
        """How long it has lasted (at ``now``, default the current time)."""
        return max(0.0, (time.time() if now is None else now) - self.since)


@dataclass
class _Late:
    destination: Hashable
    future: asyncio.Future[object]
    sent_at: float  # wall clock
    answered_at: float | None = None


class LateSends:
    """The late sends of one publisher, by message id (single event loop; no locks)."""

    def __init__(self) -> None:
        self._late: dict[uuid.UUID, _Late] = {}

    def abandon(self) -> None:
        """Forget every late send (their producer is gone); failures that come later
        are retrieved, not reported by asyncio as never retrieved."""
        for late in self._late.values():
            late.future.add_done_callback(retrieve_quietly)
        self._late.clear()

    def remember(
        self,
        message_id: uuid.UUID,
        destination: Hashable,
        future: asyncio.Future[object],
        sent_at: float,
    ) -> None:
        """``future`` (a send of ``message_id`` to ``destination``) was not answered in time."""
        self._late[message_id] = _Late(destination, future, sent_at)

    def answer(self, message_id: uuid.UUID) -> bool | None:
        """What became of an earlier late send of ``message_id``: None if there was
        none (send it), False if it is still unanswered or failed (defer it; a
        failed one is forgotten, so the next call sends it again), True if the
        broker acknowledged it (it is published; forgotten now)."""
        late = self._late.get(message_id)
        if late is None:
            return None
        if not late.future.done():
            return False
        del self._late[message_id]
        return not late.future.cancelled() and late.future.exception() is None

    def stalled_destinations(self) -> dict[Hashable, tuple[float, int]]:
        """Destinations with unanswered late sends: (oldest send time, how many)."""
        out: dict[Hashable, tuple[float, int]] = {}
        for late in self._late.values():
            if late.future.done():
                continue
            since, n = out.get(late.destination, (late.sent_at, 0))
            out[late.destination] = (min(since, late.sent_at), n + 1)
        return out

    def sweep(self, now: float | None = None) -> None:
        """Forget answered late sends nobody asked about for ``FORGET_ANSWERED_AFTER``."""
        now = time.time() if now is None else now
        for message_id, late in list(self._late.items()):
            if not late.future.done():
                continue
            if late.answered_at is None:
                late.answered_at = now
                # A failed send whose message never comes back must not warn at exit.
                if not late.future.cancelled():
                    late.future.exception()
            elif now - late.answered_at > FORGET_ANSWERED_AFTER:
                del self._late[message_id]

    def __len__(self) -> int:
        return len(self._late)


def retrieve_quietly(future: asyncio.Future[object]) -> None:
    """Mark a forgotten send's failure as seen (the row is republished either way);
    logged at debug level, since a broker restart fails them by the hundred."""
    if not future.cancelled() and (err := future.exception()) is not None:
        log.debug("a forgotten Kafka send failed (its row is republished): %r", err)
