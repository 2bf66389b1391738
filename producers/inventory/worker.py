"""``relaybus worker inventory``: the inventory service's command handler."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from consumers.app import ConsumerApp
from consumers.incoming import Incoming
from consumers.policy import RetryPolicy
from outbox.writer import Outbox
from producers.contract import (
    INVENTORY_AGGREGATE,
    INVENTORY_COMMANDS,
    CommandType,
    EventType,
    StepCommand,
    parse,
)
from producers.inventory import stock
from relaybus.settings import Settings


def inventory_app(settings: Settings | None = None) -> ConsumerApp:
    """Handles ``inventory.reserve`` and ``inventory.release`` from the saga.

    A command is applied at most once by the order's own rows (one reservation per
    order, released once), not by message id: a repeated command is answered again
    with the first outcome. Its reply event (``stock.reserved``, ``stock.refused``,
    ``stock.released``) is written through the outbox in the same transaction as the
    stock change. Commands of one order are handled in order
    (``ordered``: a failing one is retried in place), so a release never overtakes
    the reserve it compensates.
    """
    settings = settings or Settings()
    app = ConsumerApp("inventory")
    # The relay's partition count: a row written for another count lands in a
    # partition no relay drains.
    writer = Outbox(settings.outbox_partitions, settings.outbox_max_payload_bytes)

    @app.kafka(
        INVENTORY_COMMANDS,
        group="inventory",
        ordered=True,
        # Idempotent by the order's own rows, not by message id: a command sent again
        # (the saga may resend one after a restart or a deadline) is answered again.
        dedupe="none",
        sql=True,
        types=[CommandType.RESERVE.value, CommandType.RELEASE.value],
        require_object=True,
        retry=RetryPolicy(max_attempts=5, initial_delay=0.2),
        timeout=10.0,
        # One command per transaction: the hot product's row lock is held for one
        # order only, and orders never lock rows in conflicting orders (a shared
        # transaction of several orders deadlocked under load).
        batch_size=1,
    )
    async def inventory_command(message: Incoming, session: AsyncSession | None) -> None:
        assert session is not None  # inbox handlers always get one
        command = parse(StepCommand, message.payload)
        body: dict[str, object] = {"order_id": command.order_id}
        if message.type == CommandType.RESERVE:
            outcome = await stock.reserve(session, command.order_id, command.items)
            event = EventType.STOCK_RESERVED if outcome.reserved else EventType.STOCK_REFUSED
            body["reason"] = outcome.reason
        else:
            body["units"] = await stock.release(session, command.order_id)
            event = EventType.STOCK_RELEASED
        await writer.enqueue(
            session,
            aggregate_type=INVENTORY_AGGREGATE,
            aggregate_id=str(command.order_id),
            type=event,
            payload=body,
            headers={"causation_id": str(message.id)},
        )

    return app
