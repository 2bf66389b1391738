"""Stock reservations: all lines of an order or none, never oversold, released once.

**Mechanism: a conditional decrement** (``UPDATE stock SET available = available - q
WHERE sku = :sku AND available >= q``), one per line, inside a savepoint. The check
and the write are one atomic statement, so no read-then-write race exists; the row
lock it takes is held only until the transaction ends (no ``SELECT … FOR UPDATE``
round trip first), and a line that does not fit rolls the savepoint back, undoing the
order's other lines. Lines are taken in SKU order so two orders never wait on each
other in a cycle. ``CHECK (available >= 0)`` is the last line of defence.
Alternatives: ``SELECT … FOR UPDATE`` then ``UPDATE`` holds the same lock one round
trip longer; optimistic versions retry under contention, which a flash sale's hot
product is all about (``bench/inventory_contention.py`` measures it).

Reservations are keyed by order: a second reserve of an order answers what the first
did; a release flips ``reserved`` → ``released`` once (a conditional UPDATE again) and
gives the stock back only then; a release that comes before any reserve leaves a
``released`` tombstone, so a late reserve is refused instead of holding stock for an
order that was cancelled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from producers.contract import Line

_TAKE = text(
    "UPDATE inventory.stock SET available = available - :q "
    "WHERE sku = :sku AND available >= :q RETURNING available"
)
_GIVE_BACK = text("UPDATE inventory.stock SET available = available + :q WHERE sku = :sku")
_EXISTING = text(
    "SELECT status, reason FROM inventory.reservations WHERE order_id = :id FOR UPDATE"
)
_RECORD = text(
    "INSERT INTO inventory.reservations (order_id, status, lines, reason) "
    "VALUES (:id, :status, CAST(:lines AS jsonb), :reason)"
)
_RELEASE = text(
    "UPDATE inventory.reservations SET status = 'released', released_at = now() "
    "WHERE order_id = :id AND status = 'reserved' RETURNING lines"
)
_TOMBSTONE = text(
    "INSERT INTO inventory.reservations (order_id, status, lines, reason, released_at) "
    "VALUES (:id, 'released', '[]', 'released before any reservation', now()) "
    "ON CONFLICT (order_id) DO NOTHING"
)


@dataclass(frozen=True)
class Outcome:
    """``reserved`` (True/False) and, when refused, why."""

    reserved: bool
    reason: str | None = None


class _Short(Exception):
    def __init__(self, sku: str) -> None:
        self.sku = sku


async def reserve(session: AsyncSession, order_id: int, lines: list[Line]) -> Outcome:
    """Reserve every line of ``order_id`` or none, in the caller's transaction."""
    existing = (await session.execute(_EXISTING, {"id": order_id})).one_or_none()
    if existing is not None:
        if existing.status == "reserved":
            return Outcome(True)
        return Outcome(False, existing.reason or existing.status)
    try:
        async with session.begin_nested():
            for line in sorted(lines, key=lambda line: line.product):
                left = await session.scalar(_TAKE, {"sku": line.product, "q": line.quantity})
                if left is None:
                    raise _Short(line.product)
    except _Short as short:
        outcome = Outcome(False, f"{short.sku} has too few units")
    else:
        outcome = Outcome(True)
    await session.execute(
        _RECORD,
        {
            "id": order_id,
            "status": "reserved" if outcome.reserved else "refused",
            "lines": json.dumps([line.model_dump() for line in lines]),
            "reason": outcome.reason,
        },
    )
    return outcome


async def release(session: AsyncSession, order_id: int) -> int:
    """Give back ``order_id``'s reserved stock, once; return the units given back (0
    when there was nothing reserved, or it was released already)."""
    lines = await session.scalar(_RELEASE, {"id": order_id})
    if lines is None:
        await session.execute(_TOMBSTONE, {"id": order_id})
        return 0
    units = 0
    for line in sorted(lines, key=lambda line: line["product"]):
        await session.execute(_GIVE_BACK, {"sku": line["product"], "q": line["quantity"]})
        units += int(line["quantity"])
    return units


async def add_stock(session: AsyncSession, units: dict[str, int]) -> None:
    """Stock new products (``initial = available = units``); existing SKUs are left alone."""
    await session.execute(
        text(
            "INSERT INTO inventory.stock (sku, initial, available) VALUES (:sku, :n, :n) "
            "ON CONFLICT (sku) DO NOTHING"
        ),
        [{"sku": sku, "n": n} for sku, n in units.items()],
    )
