"""The order saga's state machine: pure, no I/O (the faust agent applies its decisions).

```
order.created ─► RESERVING ──stock.reserved──► CHARGING ──payment.charged──► CONFIRMED
                    │                             │
                    │ stock.refused               │ payment.failed
                    ▼                             ▼
                CANCELLED ◄──stock.released── RELEASING (compensation: release stock)
```

``order.expired`` (the orders service saw the deadline pass) compensates whatever
may have happened, from any unfinished state: it refunds (a refund before the charge
voids the charge key at the gateway, so a late charge is refused) and releases (a
release before the reservation leaves a tombstone, so a late reserve is refused),
then waits for both replies before CANCELLED; while it waits, each further expiry
sends the missing compensations again.

Every input is checked against the state: a duplicate or replayed event, or a reply
that comes after the saga moved on, changes nothing and sends nothing. Commands carry
the order id and step name, and their message id is ``step_id(order, step)``. The
services are idempotent by the order's own state (one reservation, one charge per
order), so a command sent again is answered again and never applied twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from relaybus.shop.contract import CommandType, EventType, OrderStatus


@dataclass(frozen=True)
class Command:
    """A command to send: its type and step name (the step names its id)."""

    type: CommandType
    step: str


@dataclass(frozen=True)
class Decision:
    """What one input does: the new state (None: unchanged), commands, transition."""

    state: dict[str, Any] | None = None
    commands: tuple[Command, ...] = ()
    transition: dict[str, Any] | None = None


NOTHING = Decision()
# The reply that ends each compensation.
_COMPENSATIONS = {
    EventType.STOCK_RELEASED.value: "release",
    EventType.PAYMENT_REFUNDED.value: "refund",
}


@dataclass
class _Saga:
    status: OrderStatus
    step: int
    order: dict[str, Any]
    reason: str | None = None
    awaiting: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, state: dict[str, Any]) -> _Saga:
        return cls(
            OrderStatus(state["status"]),
            int(state["step"]),
            dict(state["order"]),
            state.get("reason"),
            list(state.get("awaiting", [])),
        )

    def dump(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "step": self.step,
            "order": self.order,
            "reason": self.reason,
            "awaiting": self.awaiting,
        }

    def move(self, status: OrderStatus, reason: str | None, *commands: Command) -> Decision:
        self.status = status
        self.step += 1
        if reason is not None:
            self.reason = reason
        transition = {
            "order_id": self.order["order_id"],
            "step": self.step,
            "status": status.value,
            "reason": self.reason,
        }
        return Decision(self.dump(), commands, transition)


_COMMANDS = {
    "refund": Command(CommandType.REFUND, "refund"),
    "release": Command(CommandType.RELEASE, "release"),
}


def _expire(saga: _Saga, where: str, payload: dict[str, Any]) -> Decision:
    """The deadline passed: refund *and* release, whatever the state says. The state
    may be behind what the services did (a charge made, a reservation taken), and
    both compensations are safe when their step never happened: a refund voids the
    charge key at the gateway, a release leaves a tombstone."""
    saga.awaiting = ["refund", "release"]
    return saga.move(
        OrderStatus.RELEASING,
        f"deadline passed {where}: {payload.get('reason')}",
        _COMMANDS["refund"],
        _COMMANDS["release"],
    )


def decide(state: dict[str, Any] | None, event_type: str, payload: dict[str, Any]) -> Decision:
    """The saga's answer to one event of its order. ``state`` is the table's value (None
    before ``order.created``); ``payload`` the event's (already validated) body."""
    if state is None:
        if event_type == EventType.ORDER_EXPIRED:
            # ``order.created`` precedes this on the partition, so this saga's state
            # for the order was lost. Compensate everything anyway (see ``_expire``).
            saga = _Saga(OrderStatus.PENDING, 0, {"order_id": payload["order_id"]})
            return _expire(saga, "before the saga started", payload)
        if event_type != EventType.ORDER_CREATED:
            return NOTHING  # a reply for an order this saga never started
        saga = _Saga(OrderStatus.PENDING, 0, payload)
        return saga.move(
            OrderStatus.RESERVING, "reserving stock", Command(CommandType.RESERVE, "reserve")
        )
    saga = _Saga.load(state)
    status = saga.status
    if status.final:
        return NOTHING
    reason = payload.get("reason")
    if status is OrderStatus.RESERVING:
        if event_type == EventType.STOCK_RESERVED:
            return saga.move(
                OrderStatus.CHARGING,
                "stock reserved; charging",
                Command(CommandType.CHARGE, "charge"),
            )
        if event_type == EventType.STOCK_REFUSED:
            return saga.move(OrderStatus.CANCELLED, f"out of stock: {reason}")
        if event_type == EventType.ORDER_EXPIRED:
            return _expire(saga, "while reserving", payload)
        return NOTHING
    if status is OrderStatus.CHARGING:
        if event_type == EventType.PAYMENT_CHARGED:
            return saga.move(OrderStatus.CONFIRMED, "paid")
        if event_type == EventType.PAYMENT_FAILED:
            saga.awaiting = ["release"]
            return saga.move(
                OrderStatus.RELEASING,
                f"payment failed: {reason}",
                Command(CommandType.RELEASE, "release"),
            )
        if event_type == EventType.ORDER_EXPIRED:
            return _expire(saga, "while charging", payload)
        return NOTHING
    # RELEASING: wait for every compensation's reply.
    if event_type == EventType.ORDER_EXPIRED:
        # Still waiting a deadline later: send the compensations again (the services
        # answer a repeated command with a fresh reply).
        return Decision(saga.dump(), tuple(_COMMANDS[name] for name in saga.awaiting))
    done = _COMPENSATIONS.get(event_type)
    if done is None or done not in saga.awaiting:
        return NOTHING
    saga.awaiting.remove(done)
    if saga.awaiting:
        return Decision(saga.dump())
    return saga.move(OrderStatus.CANCELLED, None)
