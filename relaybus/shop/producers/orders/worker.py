"""``relaybus worker orders``: applies the saga's transitions to orders and their history."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from relaybus.consumers.app import ConsumerApp
from relaybus.consumers.incoming import Incoming, InvalidMessage
from relaybus.consumers.policy import RetryPolicy
from relaybus.outbox.writer import Outbox
from relaybus.settings import Settings
from relaybus.shop.contract import (
    ADMITTED,
    ORDER_TRANSITIONS,
    ORDERS_ADMITTED,
    ORDERS_THROTTLED,
    THROTTLED,
    TRANSITION,
    Decision,
    Transition,
    parse,
)
from relaybus.shop.producers.orders.store import OrderStore


def orders_app(settings: Settings | None = None, store: OrderStore | None = None) -> ConsumerApp:
    """The orders service's consumer: admission's decisions and the saga's transitions.

    Each message is applied once (inbox) in the transaction that records it, with the
    ``order.status`` (and for an admitted request ``order.created``) it causes; an
    unknown order or a payload that does not fit is dead-lettered.
    """
    settings = settings or Settings()
    app = ConsumerApp("orders")
    store = store or OrderStore(Outbox.from_settings(settings))

    @app.kafka(
        ORDERS_ADMITTED,
        group="orders-admitted",
        types=[ADMITTED],
        require_object=True,
        retry=RetryPolicy(max_attempts=5, initial_delay=0.5),
        timeout=10.0,
    )
    async def admit(message: Incoming, session: AsyncSession | None) -> None:
        assert session is not None  # inbox handlers always get one
        decision = parse(Decision, message.payload)
        if not await store.admit(session, decision.order_id):
            raise InvalidMessage("unknown-order", f"no order {decision.order_id}")

    @app.kafka(
        ORDERS_THROTTLED,
        group="orders-throttled",
        types=[THROTTLED],
        require_object=True,
        retry=RetryPolicy(max_attempts=5, initial_delay=0.5),
        timeout=10.0,
    )
    async def reject(message: Incoming, session: AsyncSession | None) -> None:
        assert session is not None
        decision = parse(Decision, message.payload)
        if not await store.reject(session, decision.order_id, decision.reason):
            raise InvalidMessage("unknown-order", f"no order {decision.order_id}")

    @app.kafka(
        ORDER_TRANSITIONS,
        group="orders-transitions",
        types=[TRANSITION],
        require_object=True,
        retry=RetryPolicy(max_attempts=5, initial_delay=0.5),
        timeout=10.0,
    )
    async def apply_transition(message: Incoming, session: AsyncSession | None) -> None:
        assert session is not None  # inbox handlers always get one
        transition = parse(Transition, message.payload)
        if not await store.apply(session, transition):
            raise InvalidMessage("unknown-order", f"no order {transition.order_id}")

    return app
