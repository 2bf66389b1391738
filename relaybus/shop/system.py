"""The shop as one AsyncAPI system: its event classes, its services' consumer apps and
its stream processors (``relaybus asyncapi`` with no ``--app`` finds it through the
``relaybus.systems`` entry point; ``docs/asyncapi.yaml`` is its committed document)."""

from __future__ import annotations

from relaybus.consumers.asyncapi import StreamReader, StreamWriter, System, document, render
from relaybus.settings import Route, Settings
from relaybus.shop.contract import (
    ADMITTED,
    INVENTORY_COMMANDS,
    INVENTORY_EVENTS,
    INVENTORY_SHARD_PREFIX,
    ORDER_EVENTS,
    ORDER_REQUESTS,
    ORDER_STATUS_EVENTS,
    ORDER_TRANSITIONS,
    ORDERS_ADMITTED,
    ORDERS_THROTTLED,
    PAYMENT_COMMANDS,
    PAYMENT_EVENTS,
    THROTTLED,
    TRANSITION,
    CommandType,
    EventType,
    shop_events,
)
from relaybus.shop.producers.inventory.worker import inventory_app
from relaybus.shop.producers.orders.worker import orders_app
from relaybus.shop.producers.payments.worker import payments_app
from relaybus.shop.settings import ShopSettings

# What the saga reads on each of its input topics (the relay's, by aggregate type).
SAGA_READS: dict[str, tuple[str, ...]] = {
    ORDER_EVENTS: (EventType.ORDER_CREATED, EventType.ORDER_EXPIRED),
    INVENTORY_EVENTS: (
        EventType.STOCK_RESERVED,
        EventType.STOCK_REFUSED,
        EventType.STOCK_RELEASED,
    ),
    PAYMENT_EVENTS: (
        EventType.PAYMENT_CHARGED,
        EventType.PAYMENT_FAILED,
        EventType.PAYMENT_REFUNDED,
    ),
}


def system() -> System:
    """The shop, as its default settings deploy it (one inventory shard: shard 0)."""
    settings = Settings()
    shop = ShopSettings()
    sharded = shop.model_copy(update={"inventory_shard": 0})
    inventory_stock: tuple[str, ...] = (CommandType.RESERVE, CommandType.RELEASE)
    payment: tuple[str, ...] = (CommandType.CHARGE, CommandType.REFUND)
    return System(
        title="relaybus flash-sale shop",
        version="2",
        events=shop_events(),
        description="The reference shop: orders, admission, the saga, inventory and payments.",
        apps=[
            orders_app(settings),
            inventory_app(settings, shop),
            inventory_app(settings, sharded),
            payments_app(settings, shop),
        ],
        readers=[
            StreamReader(
                "saga",
                topic,
                "relaybus-saga",
                types,
                "the order saga (faust, exactly once): one state machine per order",
            )
            for topic, types in SAGA_READS.items()
        ]
        + [
            StreamReader(
                "admission",
                ORDER_REQUESTS,
                "admission",
                (EventType.ORDER_REQUESTED,),
                "rate limits per IP and user (VIPs exempt): admitted or throttled",
            ),
            StreamReader(
                "read-model",
                ORDER_STATUS_EVENTS,
                "relaybus-order-status",
                (EventType.ORDER_STATUS,),
                "folds each order's statuses into its view (faust table)",
            ),
            StreamReader(
                "inventory-router",
                INVENTORY_COMMANDS,
                "inventory-router",
                inventory_stock,
                "routes each product's commands to the shard that owns it",
            ),
        ],
        writers=[
            StreamWriter("saga", INVENTORY_COMMANDS, inventory_stock, "the saga's commands"),
            StreamWriter("saga", PAYMENT_COMMANDS, payment, "the saga's commands"),
            StreamWriter("saga", ORDER_TRANSITIONS, (TRANSITION,), "each status the saga takes"),
            StreamWriter("admission", ORDERS_ADMITTED, (ADMITTED,), "admitted requests"),
            StreamWriter("admission", ORDERS_THROTTLED, (THROTTLED,), "throttled requests"),
            StreamWriter(
                "inventory-router",
                f"{INVENTORY_SHARD_PREFIX}0",
                inventory_stock,
                "shard 0's commands (one topic per shard)",
            ),
        ],
    )


def committed_document() -> str:
    """``docs/asyncapi.yaml``: the shop's document with the default endpoints (not
    this machine's environment), so that it is the same wherever it is generated."""
    defaults = Settings(
        _env_file=None,
        kafka_bootstrap="127.0.0.1:9092",
        routes=[Route(pattern="*", brokers=["kafka"])],
    )
    return render(document(system(), defaults), "yaml")


if __name__ == "__main__":  # ``make docs``
    print(committed_document(), end="")
