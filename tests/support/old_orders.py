"""The orders service as it was before ``order.created`` v2: it writes v1 (a dict, no
``currency``, no ``schema_version`` header), as the previous release did. Run next to
the current one (``relaybus worker tests.support.old_orders:app``) it is one side of a
rolling deploy."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from relaybus.consumers.app import ConsumerApp
from relaybus.outbox.writer import Outbox
from relaybus.settings import Settings
from relaybus.shop.contract import ORDER_AGGREGATE, EventType, OrderStatus, step_id
from relaybus.shop.producers.orders import worker
from relaybus.shop.producers.orders.store import OrderStore

_LOCK = text(
    "SELECT status, customer, items, amount_cents FROM orders.orders WHERE id = :id FOR UPDATE"
)


class OldOrderStore(OrderStore):
    """``admit`` as the previous release wrote it: ``order.created`` v1."""

    async def admit(self, session: AsyncSession, order_id: int) -> bool:
        order = (await session.execute(_LOCK, {"id": order_id})).one_or_none()
        if order is None:
            return False
        if order.status != OrderStatus.REQUESTED:
            return True
        await self.outbox.enqueue(
            session,
            aggregate_type=ORDER_AGGREGATE,
            aggregate_id=str(order_id),
            type=EventType.ORDER_CREATED,
            payload={
                "order_id": order_id,
                "customer": order.customer,
                "items": order.items,
                "amount_cents": order.amount_cents,
            },
            id=step_id(order_id, "created"),
        )
        await self._record(session, order_id, OrderStatus.PENDING, "admitted", 0)
        return True


def app() -> ConsumerApp:
    settings = Settings()
    return worker.orders_app(settings, store=OldOrderStore(Outbox.from_settings(settings)))
