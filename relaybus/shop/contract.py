"""The shop's message contract: topics, event and command types, deterministic ids.

Shared by the services (``producers``) and the saga (``relaybus.shop.streams.saga``); nothing else
lives here. Every shop message is keyed by the order id, so all messages of one order
land on the same partition number of every shop topic (the topics have the same
partition count), which is what lets the saga keep one order's state in one faust
table partition.
"""

from __future__ import annotations

import hashlib
import uuid
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from relaybus.consumers.incoming import InvalidMessage
from relaybus.events import EventCatalog, event

# Outbox aggregate types (the relay publishes them to ``outbox.event.<aggregatetype>``).
ORDER_AGGREGATE = "order"
ORDER_REQUEST_AGGREGATE = "order-request"
ORDER_STATUS_AGGREGATE = "order-status"
INVENTORY_AGGREGATE = "inventory"
PAYMENT_AGGREGATE = "payment"
ORDER_EVENTS = "outbox.event.order"
INVENTORY_EVENTS = "outbox.event.inventory"
PAYMENT_EVENTS = "outbox.event.payment"
# ``order.requested``: read by the admission processor only.
ORDER_REQUESTS = "outbox.event.order-request"
# ``order.status``: every status an order takes, with its version (read model, caches).
ORDER_STATUS_EVENTS = "outbox.event.order-status"

# Written by the admission processor, read by the orders service.
ORDERS_ADMITTED = "shop.order.admitted"
ORDERS_THROTTLED = "shop.order.throttled"

# Written by the saga (faust, transactional sends), read by the services' workers.
INVENTORY_COMMANDS = "shop.inventory.commands"
PAYMENT_COMMANDS = "shop.payment.commands"
ORDER_TRANSITIONS = "shop.order.transitions"

# The inventory router's output: one topic per shard (``<prefix><n>``).
INVENTORY_SHARD_PREFIX = "shop.inventory.commands.shard."

SAGA_INPUTS = (ORDER_EVENTS, INVENTORY_EVENTS, PAYMENT_EVENTS)
SAGA_OUTPUTS = (INVENTORY_COMMANDS, PAYMENT_COMMANDS, ORDER_TRANSITIONS)
ADMISSION_TOPICS = (ORDER_REQUESTS, ORDERS_ADMITTED, ORDERS_THROTTLED)
ALL_TOPICS = SAGA_INPUTS + SAGA_OUTPUTS + ADMISSION_TOPICS + (ORDER_STATUS_EVENTS,)


class EventType(StrEnum):
    """Events the services write through their outbox (facts about their own data)."""

    ORDER_REQUESTED = "order.requested"  # the API took a request; admission decides
    ORDER_CREATED = "order.created"
    ORDER_STATUS = "order.status"  # the order's status moved (version = history step)
    ORDER_EXPIRED = "order.expired"  # the orders service saw a saga miss its deadline
    STOCK_RESERVED = "stock.reserved"
    STOCK_REFUSED = "stock.refused"
    STOCK_RELEASED = "stock.released"
    PAYMENT_CHARGED = "payment.charged"
    PAYMENT_FAILED = "payment.failed"
    PAYMENT_REFUNDED = "payment.refunded"


class CommandType(StrEnum):
    """Commands the saga sends (requests; the service answers with an event)."""

    RESERVE = "inventory.reserve"
    RELEASE = "inventory.release"
    CHARGE = "payment.charge"
    REFUND = "payment.refund"


TRANSITION = "order.transition"
ADMITTED = "order.admitted"
THROTTLED = "order.throttled"


class OrderStatus(StrEnum):
    """An order's status; the saga's states are these too (from PENDING on).

    REQUESTED until admission decides; REJECTED (final) if a rate limit refused it.
    Final: CONFIRMED, CANCELLED, REJECTED.
    """

    REQUESTED = "REQUESTED"
    REJECTED = "REJECTED"
    PENDING = "PENDING"
    RESERVING = "RESERVING"
    CHARGING = "CHARGING"
    RELEASING = "RELEASING"
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"

    @property
    def final(self) -> bool:
        return self in (OrderStatus.CONFIRMED, OrderStatus.CANCELLED, OrderStatus.REJECTED)


_NAMESPACE = uuid.UUID("6f2d0c54-4c39-4e53-9a44-2b1f3e7d1a10")


def step_id(order_id: int | str, step: str) -> uuid.UUID:
    """The message id of one saga step of one order: the same on every resend.

    A saga that restarts, or a replay, sends a step again with the same id, so the
    receiving service's inbox skips it: a step is applied at most once.
    """
    return uuid.uuid5(_NAMESPACE, f"{order_id}:{step}")


_NAMESPACE_BYTES = _NAMESPACE.bytes


def step_id_text(order_id: int | str, step: str) -> str:
    """``str(step_id(order_id, step))``, computed without building a ``UUID`` (the
    stream processors' hot path: about a tenth of the cost)."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + f"{order_id}:{step}".encode()).digest())
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest[:16].hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class Line(BaseModel):
    """One order line: ``quantity`` units of ``product`` (a SKU)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    product: str = Field(min_length=1, max_length=64)
    quantity: int = Field(gt=0, le=1000)


@event("order.created", version=1, aggregate_type=ORDER_AGGREGATE, key="order_id")
class OrderCreatedV1(BaseModel):
    """``order.created`` v1: the order the saga starts from (before currencies)."""

    model_config = ConfigDict(extra="ignore")

    order_id: int
    customer: str
    items: list[Line]
    amount_cents: int


@event("order.created", version=2, aggregate_type=ORDER_AGGREGATE, key="order_id")
class OrderCreated(BaseModel):
    """``order.created`` v2: the order the saga starts from, with its amount's currency
    (ISO 4217). A v1 event is lifted by ``order_created_v1_to_v2``."""

    model_config = ConfigDict(extra="ignore")

    order_id: int
    customer: str
    items: list[Line]
    amount_cents: int
    currency: str = Field(min_length=3, max_length=3, pattern="^[A-Z]{3}$")


# Every order before v2 was priced in euros (the shop's only currency then).
V1_CURRENCY = "EUR"


def order_created_v1_to_v2(v1: dict[str, Any]) -> dict[str, Any]:
    """``order.created`` v1 → v2: the currency every v1 order was priced in."""
    return {**v1, "currency": V1_CURRENCY}


@event("order.requested", aggregate_type=ORDER_REQUEST_AGGREGATE, key="order_id")
class OrderRequested(BaseModel):
    """``order.requested``: who asked, from where; admission reads only these fields."""

    model_config = ConfigDict(extra="ignore")

    order_id: int
    customer: str = Field(min_length=1, max_length=128)
    client_ip: str = Field(max_length=64)
    # From the caller's API key (server-side data), never from a request body.
    vip: bool = False


class Decision(BaseModel):
    """``order.admitted`` / ``order.throttled``: admission's answer for one request."""

    model_config = ConfigDict(extra="ignore")

    order_id: int
    reason: str = Field(max_length=500)


@event("order.admitted", key="order_id")
class Admitted(Decision):
    """``order.admitted``: admission let the request in."""


@event("order.throttled", key="order_id")
class Throttled(Decision):
    """``order.throttled``: a rate limit refused the request."""


class StepCommand(BaseModel):
    """A saga command: which order, which step (its id is ``step_id(order_id, step)``)."""

    model_config = ConfigDict(extra="ignore")

    order_id: int
    step: str
    items: list[Line] = []
    amount_cents: int = 0


class Reply(BaseModel):
    """A service's answer to a command (``stock.*``, ``payment.*``)."""

    model_config = ConfigDict(extra="ignore")

    order_id: int
    reason: str | None = None
    amount_cents: int = 0


@event("stock.reserved", aggregate_type=INVENTORY_AGGREGATE, key="order_id")
class StockReserved(Reply):
    """The order's units are held."""


@event("stock.refused", aggregate_type=INVENTORY_AGGREGATE, key="order_id")
class StockRefused(Reply):
    """Not enough stock: nothing is held."""


@event("stock.released", aggregate_type=INVENTORY_AGGREGATE, key="order_id")
class StockReleased(Reply):
    """The order's units are back in stock (compensation)."""


@event("payment.charged", aggregate_type=PAYMENT_AGGREGATE, key="order_id")
class PaymentCharged(Reply):
    """The order is paid."""


@event("payment.failed", aggregate_type=PAYMENT_AGGREGATE, key="order_id")
class PaymentFailed(Reply):
    """The gateway declined or did not answer in time."""


@event("payment.refunded", aggregate_type=PAYMENT_AGGREGATE, key="order_id")
class PaymentRefunded(Reply):
    """The charge is returned (compensation)."""


@event("order.expired", aggregate_type=ORDER_AGGREGATE, key="order_id")
class OrderExpired(Reply):
    """The orders service saw the saga miss its deadline."""


@event("order.status", aggregate_type=ORDER_STATUS_AGGREGATE, key="order_id")
class OrderStatusChanged(BaseModel):
    """``order.status``: the order took ``status`` at ``version`` (its history step);
    the first (REQUESTED) also carries what was ordered."""

    model_config = ConfigDict(extra="ignore")

    order_id: int
    version: int = Field(ge=0)
    status: OrderStatus
    reason: str | None = Field(None, max_length=2000)
    customer: str | None = Field(None, max_length=128)
    items: list[Line] | None = None
    amount_cents: int | None = None


@event("inventory.reserve", key="order_id")
class Reserve(StepCommand):
    """Hold the order's units."""


@event("inventory.release", key="order_id")
class Release(StepCommand):
    """Return the order's units."""


@event("payment.charge", key="order_id")
class Charge(StepCommand):
    """Charge the order's amount."""


@event("payment.refund", key="order_id")
class Refund(StepCommand):
    """Refund the order's charge."""


@event("order.transition", key="order_id")
class Transition(BaseModel):
    """``order.transition``: the saga moved an order to ``status`` at step ``step``."""

    model_config = ConfigDict(extra="ignore")

    order_id: int
    step: int = Field(ge=1)
    status: OrderStatus
    reason: str | None = None


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], payload: object) -> M:
    """``payload`` as ``model``; a payload that does not fit is ``InvalidMessage``
    (``bad-payload``, with pydantic's field-by-field account): dead-lettered, not retried."""
    try:
        return model.model_validate(payload)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in err.errors()
        )
        raise InvalidMessage("bad-payload", problems[:1000]) from None


def parse_keyed(model: type[M], payload: object, key: str) -> M:
    """``parse`` a shop message that must be about the order it is keyed by; one keyed
    otherwise is ``InvalidMessage`` (``key-mismatch``): a key picks a partition, and a
    message on another order's partition would break that order's ordering."""
    message = parse(model, payload)
    order_id = getattr(message, "order_id", None)
    if str(order_id) != key:
        raise InvalidMessage("key-mismatch", f"keyed {key[:40]!r}, about {order_id}")
    return message


def shop_events() -> EventCatalog:
    """Every event and command class of the shop, every version, with the upcasters:
    what the saga reads with, and what the AsyncAPI document lists."""
    events = EventCatalog(
        OrderRequested, OrderCreatedV1, OrderCreated, OrderStatusChanged, OrderExpired,
        Admitted, Throttled, Transition,
        StockReserved, StockRefused, StockReleased,
        PaymentCharged, PaymentFailed, PaymentRefunded,
        Reserve, Release, Charge, Refund,
    )  # fmt: skip
    events.upcaster(EventType.ORDER_CREATED, from_version=1)(order_created_v1_to_v2)
    return events
