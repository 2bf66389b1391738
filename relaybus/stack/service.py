"""What every natively started service offers to the stack commands."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ServiceStatus:
    """A service's state as ``stack status`` reports it."""

    name: str
    running: bool
    endpoint: str
    pid: int | None
    detail: str = ""


class Service(Protocol):
    """A service the stack can start, stop and probe.

    ``start`` is idempotent (a running service is left alone) and returns only once a
    real readiness probe succeeded, else raises ``StackError`` with the log tail.
    ``stop`` stops only the process this stack started (by its own pid) and returns
    False when nothing was running.
    """

    name: str

    def start(self) -> None: ...

    def stop(self) -> bool: ...

    def status(self) -> list[ServiceStatus]: ...
