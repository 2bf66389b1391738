"""``relaybus stream NAME``: run a stream processor (a faust app)."""

from __future__ import annotations

import typer

from producers.settings import ShopSettings
from relaybus.settings import Settings
from streams.saga.run import run_saga

PROCESSORS = ("saga",)


def stream(
    name: str = typer.Argument(..., help=f"The stream processor: {', '.join(PROCESSORS)}."),
) -> None:
    """Run a stream processor until SIGTERM (it commits its open transaction first).

    saga: the order saga (faust agent, exactly-once, state in the table
    ``order-sagas`` backed by its changelog topic).

    Example: relaybus stream saga
    """
    if name != "saga":
        raise typer.BadParameter(
            f"unknown stream processor {name!r}: use one of {', '.join(PROCESSORS)}",
            param_hint="NAME",
        )
    run_saga(Settings(), ShopSettings())
