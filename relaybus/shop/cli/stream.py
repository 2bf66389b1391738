"""``relaybus stream NAME``: run a stream processor (a faust app)."""

from __future__ import annotations

import asyncio
import logging

import typer

from relaybus.settings import Settings
from relaybus.shop.settings import ShopSettings
from relaybus.shop.streams.admission.run import run_admission
from relaybus.shop.streams.readmodel.run import run_read_model
from relaybus.shop.streams.saga.run import run_saga
from relaybus.shop.streams.sharding.run import run_router

PROCESSORS = ("saga", "admission", "router", "order-status")


def stream(
    name: str = typer.Argument(..., help=f"The stream processor: {', '.join(PROCESSORS)}."),
) -> None:
    """Run a stream processor until SIGTERM (it commits its open transaction first).

    saga: the order saga (faust agent, exactly-once, state in the table
    ``order-sagas`` backed by its changelog topic).

    admission: rate limits in front of the orders (per customer, per client address,
    global; VIPs exempt), token buckets in Redis; stateless, at-least-once.

    router: inventory commands to the shard owning the product (consistent-hash ring
    over the current shard epoch; drain-then-switch on a change); one at a time
    (Redlock lease).

    order-status: the order-status read model (faust table, exactly-once), served on
    RELAYBUS_READ_MODEL_PORT for the orders API's GET /orders/{id}.

    Example: relaybus stream saga
    """
    if name not in PROCESSORS:
        raise typer.BadParameter(
            f"unknown stream processor {name!r}: use one of {', '.join(PROCESSORS)}",
            param_hint="NAME",
        )
    if name == "saga":
        run_saga(Settings(), ShopSettings())
        return
    if name == "order-status":
        run_read_model(Settings(), ShopSettings())
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    runner = run_admission if name == "admission" else run_router
    asyncio.run(runner(Settings(), ShopSettings()))
