"""The shop's processes for tests: real children of a ``Shop`` on test ports."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.db import session_factory
from relaybus.shop.cli.processes import Shop
from relaybus.shop.producers.orders.credentials import issue_key
from relaybus.shop.settings import ShopSettings

# Test ports, away from the defaults a developer's own ``relaybus run`` uses.
TEST_PORTS = {"orders_api_port": 18080, "gateway_port": 18090, "read_model_port": 18095}


def ports_for_tests() -> dict[str, int]:
    """``TEST_PORTS``, except where the environment names a port: ``make test`` gives
    the run on the faults stack ports of its own (tests/phases.py), so its shops and
    the main stack's run side by side."""
    return {k: v for k, v in TEST_PORTS.items() if f"RELAYBUS_{k.upper()}" not in os.environ}


def shop_settings(**overrides: Any) -> ShopSettings:
    """Shop settings on the test ports, with ``overrides``. The API's load shedding is
    off unless asked for: the test database holds other tests' unfinished orders, a
    backlog no test here is about (``test_load_shedding`` turns it on)."""
    return ShopSettings(
        **{
            **ports_for_tests(),
            "saga_session_timeout": 6.0,
            "orders_backlog_seconds": 0,
            **overrides,
        }
    )


def env_of(shop: ShopSettings) -> dict[str, str]:
    """``shop`` as RELAYBUS_* environment for child processes."""
    env = {}
    for name, value in shop.model_dump().items():
        if isinstance(value, set | list | dict):
            # pydantic-settings reads complex values as JSON.
            env[f"RELAYBUS_{name.upper()}"] = json.dumps(
                sorted(value) if isinstance(value, set) else value
            )
        elif value is not None and value != "":
            env[f"RELAYBUS_{name.upper()}"] = str(value)
    return env


@contextmanager
def running_shop(logs: Path, shop: ShopSettings, names: list[str] | None = None) -> Iterator[Shop]:
    """Start ``names`` (default: every process), wait for the HTTP ones, stop all after."""
    processes = Shop(logs, shop, names=names, env=env_of(shop))
    processes.start_all()
    try:
        processes.wait_http()
        yield processes
    finally:
        processes.stop_all()


class ShopStarter:
    """Starts shops for one test and stops every one of them afterwards, from a sync
    fixture finaliser: that runs even when a timeout abandons the async test body
    (whose own ``finally`` would then never run, leaking the children)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[Shop] = []

    def __call__(self, shop: ShopSettings, names: list[str] | None = None) -> Shop:
        processes = Shop(self.logs, shop, names=names, env=env_of(shop))
        self.started.append(processes)
        processes.start_all()
        processes.wait_http()
        return processes

    def stop_all(self) -> None:
        for processes in self.started:
            processes.stop_all()


async def api_key(engine: AsyncEngine, customer: str, *, vip: bool = False) -> str:
    """A fresh API key of the orders API for ``customer`` (as ``relaybus keys issue``)."""
    async with session_factory(engine)() as session, session.begin():
        return (await issue_key(session, customer, vip=vip)).token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
