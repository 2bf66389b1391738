"""The interface of a stateless stream processor."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from relaybus.consumers.incoming import Incoming, InvalidMessage


@dataclass(frozen=True)
class Emit:
    """One record a processor sends: topic, key, JSON body bytes, envelope headers."""

    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)


# Per input record: what to send for it, or why it can never be handled (dead letter).
Result = Sequence[Emit] | InvalidMessage


class StreamProcessor(Protocol):
    """A stateless processor: ``process`` decides for a batch of decoded inputs.

    - **Input**: the records of ``inputs`` whose ``type`` is in ``accepted_types``,
      already decoded and bounded (``relaybus.consumers.incoming.decode``); anything else was
      dead-lettered by the runtime before ``process`` sees it.
    - **Output**: one ``Result`` per input, in input order: the records to send, or an
      ``InvalidMessage`` (that input goes to ``<topic>.dlq`` with its reason).
    - **Failure**: if ``process`` raises, nothing of the batch is sent or committed;
      the runtime backs off and offers the same batch again. So ``process`` must give
      the same answer for a record it has seen (deterministic output ids; the
      downstream inbox drops repeats).
    - **Order**: within a partition, inputs come in offset order and their outputs
      are sent in that order; a key's records therefore stay ordered end to end when
      outputs are keyed the same way.
    """

    name: str
    inputs: tuple[str, ...]
    accepted_types: frozenset[str]

    async def process(self, batch: Sequence[Incoming]) -> list[Result]:
        """The outputs for ``batch`` (same length and order)."""
        ...

    def output_topics(self) -> list[str]:
        """Topics the processor may send to (created at start)."""
        ...
