"""Running the saga: a faust worker in this process (``relaybus stream saga``)."""

from __future__ import annotations

import asyncio

import faust

from producers.settings import ShopSettings
from producers.topology import ensure_shop_topics
from relaybus.settings import Settings
from streams.saga.agent import create_saga_app


def run_saga(settings: Settings, shop: ShopSettings, loglevel: str = "INFO") -> None:
    """Run the saga until SIGTERM/SIGINT (faust's worker handles both: it commits the
    open transaction and leaves the group). Creates the shop topics first."""
    asyncio.run(ensure_shop_topics(settings.kafka_bootstrap, shop))
    app = create_saga_app(settings, shop)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
