"""The order saga's state machine: pure, no I/O (the faust agent applies its decisions).

```
order.created ─► RESERVING ──stock.reserved──► CHARGING ──payment.charged──► CONFIRMED
                    │                             │
                    │ stock.refused               │ payment.failed
                    ▼                             ▼
                CANCELLED ◄──stock.released── RELEASING (compensation: release stock)
```

``order.expired`` (the orders service saw the deadline pass) compensates whatever
may have happened: from RESERVING it releases (a release before the reservation
leaves a tombstone, so a late reserve is refused); from CHARGING it refunds (a refund
before the charge voids the charge key at the gateway) and releases. The saga waits
for every compensation's reply before CANCELLED.

Every input is checked against the state: a duplicate or replayed event, or a reply
that comes after the saga moved on, changes nothing and sends nothing. Commands carry
the saga's order id and step name, and their message id is ``step_id(order, step)``:
the same on every resend, so the services' inboxes apply each step at most once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from producers.contract import CommandType, EventType, OrderStatus


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


def decide(state: dict[str, Any] | None, event_type: str, payload: dict[str, Any]) -> Decision:
    """The saga's answer to one event of its order. ``state`` is the table's value (None
    before ``order.created``); ``payload`` the event's (already validated) body."""
    if state is None:
        if event_type == EventType.ORDER_EXPIRED:
            # ``order.created`` precedes this on the partition, so the saga lost it
            # (never sent a command for it). Release anyway: a tombstone makes any
            # late reserve fail, and the order ends CANCELLED rather than stuck.
            saga = _Saga(OrderStatus.PENDING, 0, {"order_id": payload["order_id"]})
            saga.awaiting = ["release"]
            return saga.move(
                OrderStatus.RELEASING,
                f"deadline passed before the saga started: {payload.get('reason')}",
                Command(CommandType.RELEASE, "release"),
            )
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
            saga.awaiting = ["release"]
            return saga.move(
                OrderStatus.RELEASING,
                f"deadline passed while reserving: {reason}",
                Command(CommandType.RELEASE, "release"),
            )
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
            saga.awaiting = ["refund", "release"]
            return saga.move(
                OrderStatus.RELEASING,
                f"deadline passed while charging: {reason}",
                Command(CommandType.REFUND, "refund"),
                Command(CommandType.RELEASE, "release"),
            )
        return NOTHING
    # RELEASING: wait for every compensation's reply.
    done = _COMPENSATIONS.get(event_type)
    if done is None or done not in saga.awaiting:
        return NOTHING
    saga.awaiting.remove(done)
    if saga.awaiting:
        return Decision(saga.dump())
    return saga.move(OrderStatus.CANCELLED, None)
