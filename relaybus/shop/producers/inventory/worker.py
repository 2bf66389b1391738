"""``relaybus worker inventory``: the inventory service's command handler."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from relaybus.consumers.app import ConsumerApp
from relaybus.consumers.incoming import Incoming, strict_int
from relaybus.consumers.policy import RetryPolicy
from relaybus.outbox.writer import Outbox
from relaybus.settings import Settings
from relaybus.shop.contract import (
    INVENTORY_AGGREGATE,
    INVENTORY_COMMANDS,
    INVENTORY_SHARD_PREFIX,
    CommandType,
    EventType,
    StepCommand,
    parse,
)
from relaybus.shop.producers.inventory import stock
from relaybus.shop.settings import ShopSettings

_LOG = text(
    "INSERT INTO inventory.command_log "
    "(product, route_seq, epoch, shard, router_fence, order_id, command) "
    "VALUES (:product, :seq, :epoch, :shard, :fence, :order_id, :command)"
)


def inventory_app(
    settings: Settings | None = None, shop: ShopSettings | None = None
) -> ConsumerApp:
    """Handles ``inventory.reserve`` and ``inventory.release`` from the saga.

    A command is applied at most once by the order's own rows (one reservation per
    order, released once), not by message id: a repeated command is answered again
    with the first outcome. Its reply event (``stock.reserved``, ``stock.refused``,
    ``stock.released``) is written through the outbox in the same transaction as the
    stock change. Commands of one order are handled in order
    (``ordered``: a failing one is retried in place), so a release never overtakes
    the reserve it compensates.

    With ``RELAYBUS_INVENTORY_SHARD=N`` it serves shard N: it reads
    ``shop.inventory.commands.shard.N`` (group ``inventory-shard-N``), where the router
    sends the commands of the products shard N owns, and logs each applied command
    with its routing headers in ``inventory.command_log`` (same transaction): the
    record of per-product order across shard changes. Without it, it reads the
    unsharded ``shop.inventory.commands`` (a shop run without the router).
    """
    settings = settings or Settings()
    shop = shop or ShopSettings()
    shard = shop.inventory_shard
    topic = INVENTORY_COMMANDS if shard is None else f"{INVENTORY_SHARD_PREFIX}{shard}"
    group = "inventory" if shard is None else f"inventory-shard-{shard}"
    app = ConsumerApp("inventory" if shard is None else group)
    # The relay's partition count: a row written for another count lands in a
    # partition no relay drains.
    writer = Outbox.from_settings(settings)

    @app.kafka(
        topic,
        group=group,
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
        if shard is not None:
            await _log_routing(session, message, shard, command.order_id)

    return app


async def _log_routing(session: AsyncSession, message: Incoming, shard: int, order_id: int) -> None:
    """Record the router's headers of an applied command (audit data only: nothing
    here decides what is applied). A header that is missing or not a number is
    logged as -1, so a record written by another client still shows up."""
    headers = message.headers
    await session.execute(
        _LOG,
        {
            "product": headers.get("route_product", "")[:128],
            "seq": strict_int(headers.get("route_seq"), low=0, high=2**63 - 1) or -1,
            "epoch": strict_int(headers.get("route_epoch"), low=0, high=2**31 - 1) or -1,
            "shard": shard,
            "fence": strict_int(headers.get("route_fence"), low=0, high=2**63 - 1) or -1,
            "order_id": order_id,
            "command": message.type,
        },
    )
