"""The flash sale's report and invariant checks (``relaybus demo``, the shop's tests).

Everything is read from where it lives: each service's own schema, the gateway's
record of charges, and the Kafka dead-letter topics. Nothing is taken on trust from
the workload driver except the set of order ids it placed.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.brokers.kafka_admin import end_offsets, list_topics
from relaybus.brokers.kafka_connection import KafkaTarget
from relaybus.consumers.naming import dlq_name
from relaybus.shop.contract import INVENTORY_COMMANDS, ORDER_TRANSITIONS, PAYMENT_COMMANDS
from relaybus.shop.producers.payments.worker import charge_key

DLQ_TOPICS = tuple(dlq_name(t) for t in (INVENTORY_COMMANDS, PAYMENT_COMMANDS, ORDER_TRANSITIONS))


@dataclass
class ProductLine:
    """One product: ``initial = sold + available`` must hold once every order is final."""

    sku: str
    initial: int
    sold: int
    available: int
    held: int  # units in reservations still 'reserved'

    @property
    def conserved(self) -> bool:
        return self.initial == self.sold + self.available and self.held == self.sold


@dataclass
class ShopReport:
    """What a run did and whether the shop's invariants hold (``problems`` is empty)."""

    orders: int
    statuses: dict[str, int]
    cancelled_by_reason: dict[str, int]
    products: list[ProductLine]
    charges: dict[str, int]
    dead_letters: int
    latency_ms: dict[str, float]
    problems: list[str] = field(default_factory=list)
    workload: dict[str, Any] = field(default_factory=dict)
    # The pipeline as users feel it: orders finished (any final status) per second,
    # from the first order's commit to the last one's final status, and commit -> final.
    finished_per_second: float = 0.0
    final_latency_ms: dict[str, float] = field(default_factory=dict)
    burst: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        for product, line in zip(out["products"], self.products, strict=True):
            product["conserved"] = line.conserved
        return out


async def dead_letter_count(bootstrap: KafkaTarget) -> int:
    """Records in the shop's dead-letter topics (0 for one that does not exist)."""
    existing = await list_topics(bootstrap)
    total = 0
    for topic in DLQ_TOPICS:
        if topic in existing:
            total += sum((await end_offsets(bootstrap, topic)).values())
    return total


def _reason_kind(reason: str | None) -> str:
    return (reason or "unknown").split(":", 1)[0]


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    values = sorted(values)

    def at(q: float) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))], 1)

    return {
        "p50": at(0.50),
        "p90": at(0.90),
        "p99": at(0.99),
        "max": round(values[-1], 1),
        "mean": round(statistics.fmean(values), 1),
    }


async def collect(
    engine: AsyncEngine,
    gateway_url: str,
    order_ids: list[int],
    skus: list[str],
    dead_letters: int,
) -> ShopReport:
    """Read the run's outcome and check every invariant; ``problems`` lists breaches."""
    problems: list[str] = []
    async with engine.connect() as conn:
        orders = (
            await conn.execute(
                text(
                    "SELECT o.id, o.status, o.reason, o.created_at, "
                    "(SELECT max(h.at) FROM orders.history h WHERE h.order_id = o.id "
                    " AND h.status IN ('CONFIRMED', 'CANCELLED', 'REJECTED')) AS finished_at "
                    "FROM orders.orders o WHERE o.id = ANY(:ids)"
                ),
                {"ids": order_ids},
            )
        ).all()
        reservations = {
            row.order_id: row
            for row in (
                await conn.execute(
                    text(
                        "SELECT order_id, status, lines FROM inventory.reservations "
                        "WHERE order_id = ANY(:ids)"
                    ),
                    {"ids": order_ids},
                )
            ).all()
        }
        stock = (
            await conn.execute(
                text("SELECT sku, initial, available FROM inventory.stock WHERE sku = ANY(:s)"),
                {"s": skus},
            )
        ).all()
        payments = {
            row.order_id: row.status
            for row in (
                await conn.execute(
                    text(
                        "SELECT order_id, status FROM payments.charges WHERE order_id = ANY(:ids)"
                    ),
                    {"ids": order_ids},
                )
            ).all()
        }
    async with httpx.AsyncClient(base_url=gateway_url, timeout=30) as client:
        response = await client.get("/charges")
        response.raise_for_status()
        gateway = {c["key"]: c for c in response.json()}

    if len(orders) != len(order_ids):
        problems.append(f"{len(order_ids) - len(orders)} accepted orders are missing")
    statuses = Counter(o.status for o in orders)
    unfinished = [o.id for o in orders if o.status not in ("CONFIRMED", "CANCELLED", "REJECTED")]
    if unfinished:
        problems.append(f"{len(unfinished)} orders unfinished (e.g. {unfinished[:3]})")
    confirmed = {o.id for o in orders if o.status == "CONFIRMED"}
    cancelled = {o.id for o in orders if o.status == "CANCELLED"}
    rejected = {o.id for o in orders if o.status == "REJECTED"}
    for order_id in rejected & set(reservations):
        problems.append(f"order {order_id} was rejected by admission but has a reservation")
    for order in orders:
        if order.status == "REJECTED" and not order.reason:
            problems.append(f"rejected order {order.id} has no reason")

    sold: Counter[str] = Counter()
    held: Counter[str] = Counter()
    for order_id, reservation in reservations.items():
        if reservation.status != "reserved":
            continue
        for line in reservation.lines:
            held[line["product"]] += int(line["quantity"])
            if order_id in confirmed:
                sold[line["product"]] += int(line["quantity"])
        if order_id not in confirmed:
            problems.append(f"order {order_id} is not confirmed but still holds stock")
    for order_id in confirmed:
        if reservations.get(order_id) is None or reservations[order_id].status != "reserved":
            problems.append(f"confirmed order {order_id} has no reservation")
    products = [ProductLine(s.sku, s.initial, sold[s.sku], s.available, held[s.sku]) for s in stock]
    for line in products:
        if not line.conserved:
            problems.append(
                f"{line.sku}: initial {line.initial} != sold {line.sold} + available "
                f"{line.available} (held {line.held})"
            )

    charges: Counter[str] = Counter()
    for order_id in order_ids:
        record = gateway.get(charge_key(order_id))
        status = record["status"] if record else "none"
        charges[status] += 1
        if order_id in confirmed and status != "charged":
            problems.append(f"confirmed order {order_id} has gateway charge status {status}")
        if status == "charged" and order_id not in confirmed:
            problems.append(f"order {order_id} was charged but is not confirmed")
        if status != "none" and order_id in rejected:
            problems.append(f"order {order_id} was rejected by admission but charged ({status})")
        if status == "refunded" and order_id not in cancelled:
            problems.append(f"order {order_id} was refunded but is not cancelled")
        ours = payments.get(order_id)
        if status in ("charged", "refunded") and ours != status:
            problems.append(f"order {order_id}: gateway says {status}, payments says {ours}")
    if dead_letters:
        problems.append(f"{dead_letters} dead letters")

    latency = [
        (o.finished_at - o.created_at).total_seconds() * 1000
        for o in orders
        if o.status == "CONFIRMED" and o.finished_at is not None
    ]
    finals = [o for o in orders if o.finished_at is not None]
    span = (
        (max(o.finished_at for o in finals) - min(o.created_at for o in finals)).total_seconds()
        if finals
        else 0.0
    )
    return ShopReport(
        orders=len(orders),
        statuses=dict(statuses),
        cancelled_by_reason=dict(
            Counter(_reason_kind(o.reason) for o in orders if o.status == "CANCELLED")
        ),
        products=products,
        charges=dict(charges),
        dead_letters=dead_letters,
        latency_ms=_percentiles(latency),
        problems=problems,
        finished_per_second=round(len(finals) / span, 1) if span > 0 else 0.0,
        final_latency_ms=_percentiles(
            [(o.finished_at - o.created_at).total_seconds() * 1000 for o in finals]
        ),
    )
