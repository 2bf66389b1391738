"""``relaybus worker orders``: applies the saga's transitions to orders and their history."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from consumers.app import ConsumerApp
from consumers.incoming import Incoming, InvalidMessage
from consumers.policy import RetryPolicy
from outbox.writer import Outbox
from producers.contract import ORDER_TRANSITIONS, TRANSITION, Transition, parse
from producers.orders.store import OrderStore


def orders_app() -> ConsumerApp:
    """The orders service's consumer: one handler on ``shop.order.transitions``.

    Each transition is applied once (inbox) in the transaction that records it; an
    unknown order or a payload that does not fit is dead-lettered.
    """
    app = ConsumerApp("orders")
    store = OrderStore(Outbox())  # applying transitions writes no event

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
