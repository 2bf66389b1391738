"""Network faults through Toxiproxy (S6): the stack's proxies (stack/toxiproxy.py) cut,
reset, slowed or throttled for a bounded time over its HTTP API.

Relays reach Kafka through the ``kafka`` proxy and workers reach PostgreSQL through
the ``postgres`` proxy; everything else connects directly, so a fault touches only
the link it names.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import make_url

from relaybus.stack.settings import StackSettings
from relaybus.stack.toxiproxy import Toxiproxy


class ToxiproxyAPI:
    """The few calls of Toxiproxy's HTTP API the faults use."""

    def __init__(self, stack: StackSettings | None = None) -> None:
        self.base = Toxiproxy(stack or StackSettings()).api

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.base}{path}", data=data, method=method)
        request.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                raw = response.read()
        except urllib.error.URLError as err:
            if isinstance(err, urllib.error.HTTPError):
                raise
            raise RuntimeError(
                f"Toxiproxy does not answer at {self.base} ({err.reason}): `relaybus stack "
                "up` builds and starts it when Go is installed"
            ) from err
        return json.loads(raw) if raw else None

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return await asyncio.to_thread(self._call, method, path, body)

    async def reset(self) -> None:
        """Every proxy enabled, every toxic removed (``POST /reset``)."""
        await self.call("POST", "/reset")

    @asynccontextmanager
    async def cut(self, proxy: str) -> AsyncIterator[None]:
        """The proxy disabled: its connections closed, new ones refused."""
        await self.call("POST", f"/proxies/{proxy}", {"enabled": False})
        try:
            yield
        finally:
            await self.call("POST", f"/proxies/{proxy}", {"enabled": True})

    @asynccontextmanager
    async def toxic(
        self, proxy: str, kind: str, attributes: dict[str, int], stream: str = "downstream"
    ) -> AsyncIterator[None]:
        """A toxic on ``proxy`` for the block's duration."""
        name = f"s6-{kind}-{stream}"
        body = {"name": name, "type": kind, "stream": stream, "attributes": attributes}
        await self.call("POST", f"/proxies/{proxy}/toxics", body)
        try:
            yield
        finally:
            await self.call("DELETE", f"/proxies/{proxy}/toxics/{name}")


@dataclass(frozen=True)
class NetworkFault:
    """One S6 fault: what it does to which link, for how long."""

    link: str  # "relay-kafka" or "worker-postgres"
    kind: str  # "cut", "latency", "reset_peer", "timeout", "bandwidth"
    seconds: float

    @property
    def proxy(self) -> str:
        return "kafka" if self.link == "relay-kafka" else "postgres"

    async def inject(self, api: ToxiproxyAPI) -> float:
        """Hold the fault for ``seconds``; return how long it really lasted."""
        began = time.monotonic()
        if self.kind == "cut":
            async with api.cut(self.proxy):
                await asyncio.sleep(self.seconds)  # the outage is the fault
        else:
            kind, attributes, stream = _TOXICS[self.kind]
            async with api.toxic(self.proxy, kind, attributes, stream):
                await asyncio.sleep(self.seconds)  # the toxic's duration is the fault
        return time.monotonic() - began

    def describe(self) -> str:
        what = {
            "cut": "cut",
            "latency": "+1 s latency (±250 ms)",
            "reset_peer": "connections reset",
            "timeout": "data dropped, connections closed after 3 s",
            "bandwidth": "32 KB/s",
        }[self.kind]
        return f"{self.link}: {what}"


# Toxiproxy toxic type, attributes, direction. "timeout" drops the data and closes the
# connection after 3 s (bounded: with 0 it would hold the connection open forever).
_TOXICS: dict[str, tuple[str, dict[str, int], str]] = {
    "latency": ("latency", {"latency": 1000, "jitter": 250}, "downstream"),
    "reset_peer": ("reset_peer", {"timeout": 0}, "downstream"),
    "timeout": ("timeout", {"timeout": 3000}, "upstream"),
    "bandwidth": ("bandwidth", {"rate": 32}, "upstream"),
}

SCHEDULE = (
    NetworkFault("relay-kafka", "cut", 5.0),
    NetworkFault("worker-postgres", "cut", 5.0),
    NetworkFault("relay-kafka", "latency", 5.0),
    NetworkFault("worker-postgres", "timeout", 5.0),
    NetworkFault("relay-kafka", "reset_peer", 3.0),
    NetworkFault("relay-kafka", "bandwidth", 5.0),
)


def proxied_env(
    database_url: str, stack: StackSettings | None = None
) -> tuple[dict[str, str], dict[str, str]]:
    """(relay env, worker env): relays to Kafka and workers to PostgreSQL through the
    proxies."""
    s = stack or StackSettings()
    database = make_url(database_url).set(port=s.postgres_proxied_port)
    relay = {"RELAYBUS_KAFKA_BOOTSTRAP": f"{s.host}:{s.kafka_proxied_port}"}
    worker = {"RELAYBUS_DATABASE_URL": database.render_as_string(hide_password=False)}
    return relay, worker
