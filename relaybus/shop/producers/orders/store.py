"""The orders service's SQL: orders, their history and idempotency keys (schema ``orders``).

Every write that others must hear about goes through the outbox in the same
transaction (``Outbox.write``): an order exists if and only if its ``order.created``
event will be published.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, column, insert, table, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession

from relaybus.outbox.writer import Outbox
from relaybus.shop.contract import (
    ORDER_AGGREGATE,
    ORDER_REQUEST_AGGREGATE,
    ORDER_STATUS_AGGREGATE,
    EventType,
    Line,
    OrderCreated,
    OrderStatus,
    Transition,
    step_id,
)

_orders = table(
    "orders",
    column("id"),
    column("customer"),
    column("items", JSONB),
    column("amount_cents"),
    column("status"),
    schema="orders",
)
# Built once: ``Outbox.write`` combines a statement with the event INSERT once per
# statement object and reuses it.
_INSERT_ORDER = insert(_orders).values(
    id=bindparam("id"),
    customer=bindparam("customer"),
    items=bindparam("items", type_=JSONB),
    amount_cents=bindparam("amount_cents"),
    status=OrderStatus.REQUESTED.value,
)
_FIRST_STEP = text(
    "INSERT INTO orders.history (order_id, step, status, reason) "
    "VALUES (:id, 0, 'REQUESTED', 'received')"
)
_NEXT_STEP = text(
    "INSERT INTO orders.history (order_id, step, status, reason) "
    "SELECT :id, coalesce(max(step), -1) + 1, :status, :reason "
    "FROM orders.history WHERE order_id = :id RETURNING step"
)
_SET_STATUS = text(
    "UPDATE orders.orders SET status = :status, step = greatest(step, :saga_step), "
    "reason = :reason, updated_at = now() WHERE id = :id"
)
_LOCK_ORDER = text(
    "SELECT status, step, customer, items, amount_cents FROM orders.orders "
    "WHERE id = :id FOR UPDATE"
)
_CLAIM_KEY = text(
    "INSERT INTO orders.idempotency_keys (customer, key, request_hash, order_id) "
    "VALUES (:customer, :key, :hash, :id) ON CONFLICT (customer, key) DO NOTHING "
    "RETURNING order_id"
)
_READ_KEY = text(
    "SELECT request_hash, order_id FROM orders.idempotency_keys "
    "WHERE customer = :customer AND key = :key"
)
# In slices, so a large purge never holds many row locks or a long transaction.
_PURGE_KEYS = text(
    "DELETE FROM orders.idempotency_keys WHERE ctid IN ("
    " SELECT ctid FROM orders.idempotency_keys"
    " WHERE created_at < now() - make_interval(secs => :age) LIMIT 5000)"
)
# The backlog as the API's load shedding reads it: unfinished orders younger than the
# saga deadline (older ones are the deadline sweep's, not the pipeline's current
# load), through the partial index ``ix_orders_unfinished`` (its predicate spelt out
# so the planner uses it); and the orders placed since the newest id seen (snowflake
# ids grow).
_BACKLOG = text(
    "SELECT (SELECT count(*) FROM orders.orders WHERE status NOT IN ('CONFIRMED', "
    "'CANCELLED') AND status <> 'REJECTED' "
    "AND created_at > now() - make_interval(secs => :window)) AS in_flight, "
    "(SELECT count(*) FROM orders.orders WHERE id > :since) AS arrived, "
    "(SELECT max(id) FROM orders.orders) AS newest"
)
_PRICES = text("SELECT sku, price_cents FROM orders.products WHERE sku = ANY(:skus)")


class UnknownProducts(LookupError):
    """Some ordered products are not in the catalog (``products`` lists them)."""

    def __init__(self, products: list[str]) -> None:
        super().__init__(f"unknown products: {', '.join(products)}")
        self.products = products


class KeyReused(ValueError):
    """An idempotency key came back with a different request body."""


@dataclass(frozen=True)
class Accepted:
    """The answer to an order request; ``replayed`` when an earlier request with the same
    idempotency key made the order."""

    order_id: int
    replayed: bool


def request_hash(customer: str, items: list[Line]) -> str:
    """A fingerprint of a request body, for "same key, different body" checks."""
    canonical = json.dumps(
        {"customer": customer, "items": [line.model_dump() for line in items]},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class OrderStore:
    """Places and reads orders; applies transitions. Stateless; methods take a session
    whose transaction the caller owns (and commits)."""

    def __init__(self, outbox: Outbox, currency: str = "EUR") -> None:
        self.outbox = outbox
        self.currency = currency  # ISO 4217, of every amount (order.created v2)

    async def place(
        self,
        session: AsyncSession,
        order_id: int,
        customer: str,
        items: list[Line],
        idempotency_key: str | None,
        client_ip: str = "",
        vip: bool = False,
    ) -> Accepted:
        """Write the order (REQUESTED), its first history step, ``order.requested`` (for
        admission) and ``order.status`` version 0, or find the order an earlier request
        of the same ``customer`` with ``idempotency_key`` made (keys are per customer).
        ``client_ip`` is the limit key of the caller's address and ``vip`` its key's
        flag: admission reads both.

        Concurrent requests with one key: the key's row is inserted first, so the
        second waits on the first's uncommitted row and then sees it (``ON CONFLICT``);
        exactly one order is made. Raises ``UnknownProducts`` or ``KeyReused`` having
        written nothing (the caller rolls back).
        """
        digest = request_hash(customer, items)
        if idempotency_key is not None:
            scope = {"customer": customer, "key": idempotency_key}
            claimed = await session.scalar(_CLAIM_KEY, {**scope, "hash": digest, "id": order_id})
            if claimed is None:
                row = (await session.execute(_READ_KEY, scope)).one()
                if row.request_hash != digest:
                    raise KeyReused(
                        "this Idempotency-Key was used with a different request body; "
                        "use a new key for a new order"
                    )
                return Accepted(int(row.order_id), replayed=True)
        skus = sorted({line.product for line in items})
        prices = dict((await session.execute(_PRICES, {"skus": skus})).tuples().all())
        unknown = [sku for sku in skus if sku not in prices]
        if unknown:
            raise UnknownProducts(unknown)
        lines = [line.model_dump() for line in items]
        amount = sum(prices[line.product] * line.quantity for line in items)
        await self.outbox.write(
            session,
            _INSERT_ORDER,
            {"id": order_id, "customer": customer, "items": lines, "amount_cents": amount},
            aggregate_type=ORDER_REQUEST_AGGREGATE,
            aggregate_id=str(order_id),
            type=EventType.ORDER_REQUESTED,
            payload={
                "order_id": order_id,
                "customer": customer,
                "client_ip": client_ip,
                "vip": vip,
            },
            id=step_id(order_id, "requested"),
        )
        await session.execute(_FIRST_STEP, {"id": order_id})
        await self._announce(
            session,
            order_id,
            0,
            OrderStatus.REQUESTED,
            "received",
            {"customer": customer, "items": lines, "amount_cents": amount},
        )
        return Accepted(order_id, replayed=False)

    async def purge_idempotency_keys(self, session: AsyncSession, older_than: float) -> int:
        """Forget up to 5 000 Idempotency-Keys older than ``older_than`` seconds."""
        result = await session.execute(_PURGE_KEYS, {"age": older_than})
        return int(getattr(result, "rowcount", 0) or 0)

    async def admit(self, session: AsyncSession, order_id: int) -> bool:
        """Admission let the request in: REQUESTED becomes PENDING and ``order.created``
        is written (the saga starts from it), in this transaction. An order no longer
        REQUESTED (already decided, or rejected by the deadline) is left as it is.
        False if the order is unknown."""
        order = (await session.execute(_LOCK_ORDER, {"id": order_id})).one_or_none()
        if order is None:
            return False
        if order.status != OrderStatus.REQUESTED:
            return True
        created = OrderCreated.model_validate(
            {
                "order_id": order_id,
                "customer": order.customer,
                "items": order.items,
                "amount_cents": order.amount_cents,
                "currency": self.currency,
            }
        )
        await self.outbox.enqueue(session, created, id=step_id(order_id, "created"))
        await self._record(session, order_id, OrderStatus.PENDING, "admitted", 0)
        return True

    async def reject(self, session: AsyncSession, order_id: int, reason: str) -> bool:
        """Admission refused the request: REQUESTED becomes REJECTED (final) with
        ``reason``. An order no longer REQUESTED is left as it is. False if unknown."""
        order = (await session.execute(_LOCK_ORDER, {"id": order_id})).one_or_none()
        if order is None:
            return False
        if order.status == OrderStatus.REQUESTED:
            await self._record(session, order_id, OrderStatus.REJECTED, reason, 0)
        return True

    async def _record(
        self,
        session: AsyncSession,
        order_id: int,
        status: OrderStatus,
        reason: str | None,
        saga_step: int,
    ) -> int:
        """Move the (locked) order to ``status``: a history row, the order row and
        ``order.status`` with the history step as its version. Returns the version."""
        params = {"id": order_id, "status": status.value, "reason": reason}
        version = int(await session.scalar(_NEXT_STEP, params) or 0)
        await session.execute(_SET_STATUS, {**params, "saga_step": saga_step})
        await self._announce(session, order_id, version, status, reason, {})
        return version

    async def _announce(
        self,
        session: AsyncSession,
        order_id: int,
        version: int,
        status: OrderStatus,
        reason: str | None,
        extra: dict[str, Any],
    ) -> None:
        await self.outbox.enqueue(
            session,
            aggregate_type=ORDER_STATUS_AGGREGATE,
            aggregate_id=str(order_id),
            type=EventType.ORDER_STATUS,
            payload={
                "order_id": order_id,
                "version": version,
                "status": status.value,
                "reason": reason,
                **extra,
            },
            id=step_id(order_id, f"status-{version}"),
        )

    async def get(self, session: AsyncSession, order_id: int) -> dict[str, Any] | None:
        """The order with its history (oldest first), or None."""
        order = (
            await session.execute(
                text(
                    "SELECT id, customer, items, amount_cents, status, reason, created_at, "
                    "updated_at FROM orders.orders WHERE id = :id"
                ),
                {"id": order_id},
            )
        ).one_or_none()
        if order is None:
            return None
        history = await session.execute(
            text(
                "SELECT step, status, reason, at FROM orders.history "
                "WHERE order_id = :id ORDER BY step"
            ),
            {"id": order_id},
        )
        steps = {h.step: h for h in history}
        return {
            "id": str(order.id),
            "customer": order.customer,
            "items": order.items,
            "amount_cents": order.amount_cents,
            "status": order.status,
            "reason": order.reason,
            "version": max(steps, default=0),
            "created_at": order.created_at.isoformat(),
            "updated_at": order.updated_at.isoformat(),
            "history": [
                {"step": h.step, "status": h.status, "reason": h.reason, "at": h.at.isoformat()}
                for h in steps.values()
            ],
        }

    async def apply(self, session: AsyncSession, transition: Transition) -> bool:
        """Move the order's status by ``transition`` and record it in the history.

        Order-tolerant: a transition moves the status only if it is a later saga step
        than the one applied, or if it is final (CONFIRMED/CANCELLED) and the order is
        not: a saga that lost its state and started over numbers its steps from 1
        again, and its outcome must still land. Nothing moves a final order. The
        history gets one row per applied transition, numbered by this service. False
        if the order is unknown.
        """
        order = (await session.execute(_LOCK_ORDER, {"id": transition.order_id})).one_or_none()
        if order is None:
            return False
        if OrderStatus(order.status).final:
            return True
        if transition.step <= order.step and not transition.status.final:
            return True  # late or repeated: the status already moved past it
        await self._record(
            session, transition.order_id, transition.status, transition.reason, transition.step
        )
        return True

    async def expire_overdue(self, session: AsyncSession, deadline: float, limit: int = 500) -> int:
        """Announce ``order.expired`` for unfinished orders older than ``deadline`` seconds:
        the saga compensates them. Repeated every ``deadline`` while an order stays
        unfinished (an announcement the saga missed is made again; the saga ignores
        repeats). A request admission never decided is REJECTED here instead (no saga
        ran for it). Returns how many orders were announced or rejected."""
        overdue = (
            (
                await session.execute(
                    text(
                        "SELECT id, status FROM orders.orders "
                        "WHERE status NOT IN ('CONFIRMED', 'CANCELLED', 'REJECTED') "
                        "AND created_at < now() - make_interval(secs => :age) "
                        "AND (expired_at IS NULL "
                        "     OR expired_at < now() - make_interval(secs => :age)) "
                        "ORDER BY created_at LIMIT :limit FOR UPDATE SKIP LOCKED"
                    ),
                    {"age": deadline, "limit": limit},
                )
            )
            .tuples()
            .all()
        )
        for order_id, status in overdue:
            if status == OrderStatus.REQUESTED:
                reason = f"admission did not decide within {deadline:g} s"
                await self._record(session, order_id, OrderStatus.REJECTED, reason, 0)
                continue
            await self.outbox.enqueue(
                session,
                aggregate_type=ORDER_AGGREGATE,
                aggregate_id=str(order_id),
                type=EventType.ORDER_EXPIRED,
                payload={"order_id": order_id, "reason": f"no outcome within {deadline:g} s"},
            )
        if overdue:
            await session.execute(
                text("UPDATE orders.orders SET expired_at = now() WHERE id = ANY(:ids)"),
                {"ids": [order_id for order_id, _ in overdue]},
            )
        return len(overdue)


async def add_products(session: AsyncSession, prices: dict[str, int]) -> None:
    """Put products in the orders catalog (price in cents); an existing SKU keeps its price."""
    await session.execute(
        text(
            "INSERT INTO orders.products (sku, price_cents) VALUES (:sku, :price) "
            "ON CONFLICT (sku) DO NOTHING"
        ),
        [{"sku": sku, "price": price} for sku, price in prices.items()],
    )


async def read_backlog(session: AsyncSession, since: int, window: float) -> tuple[int, int, int]:
    """``(in_flight, arrived, newest)``: unfinished orders placed in the last ``window``
    seconds, orders with an id above ``since`` (placed since the previous reading, by
    any API replica), and the newest id (the next reading's ``since``). What the API's
    load shedding reads (``streams.shedding.BacklogGate``)."""
    row = (await session.execute(_BACKLOG, {"since": since, "window": window})).one()
    return int(row.in_flight), int(row.arrived), int(row.newest or since)
