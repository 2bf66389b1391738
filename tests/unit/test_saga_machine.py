"""The order saga's state machine: every path, and duplicates/late replies change nothing."""

from __future__ import annotations

from typing import Any

from relaybus.shop.contract import CommandType, EventType, OrderStatus
from relaybus.shop.streams.saga.machine import Decision, decide

ORDER = {
    "order_id": 7,
    "customer": "c",
    "items": [{"product": "p", "quantity": 1}],
    "amount_cents": 500,
}


def run(*events: tuple[str, dict[str, Any]]) -> tuple[dict[str, Any] | None, list[Decision]]:
    """Feed events in order; returns the final state and every decision."""
    state: dict[str, Any] | None = None
    decisions = []
    for event_type, payload in events:
        decision = decide(state, event_type, payload)
        decisions.append(decision)
        if decision.state is not None:
            state = decision.state
    return state, decisions


def reply(event: EventType, reason: str | None = None) -> tuple[str, dict[str, Any]]:
    return event.value, {"order_id": 7, "reason": reason}


CREATED = (EventType.ORDER_CREATED.value, ORDER)


def commands(decisions: list[Decision]) -> list[CommandType]:
    return [c.type for d in decisions for c in d.commands]


def statuses(decisions: list[Decision]) -> list[str]:
    return [d.transition["status"] for d in decisions if d.transition is not None]


def test_happy_path_reserves_charges_and_confirms() -> None:
    state, decisions = run(
        CREATED, reply(EventType.STOCK_RESERVED), reply(EventType.PAYMENT_CHARGED)
    )
    assert state is not None
    assert state["status"] == OrderStatus.CONFIRMED
    assert commands(decisions) == [CommandType.RESERVE, CommandType.CHARGE]
    assert statuses(decisions) == ["RESERVING", "CHARGING", "CONFIRMED"]
    steps = [d.transition["step"] for d in decisions if d.transition]
    assert steps == [1, 2, 3]


def test_refused_stock_cancels_without_compensation() -> None:
    state, decisions = run(CREATED, reply(EventType.STOCK_REFUSED, "p has too few units"))
    assert state is not None
    assert state["status"] == OrderStatus.CANCELLED
    assert state["reason"] == "out of stock: p has too few units"
    assert commands(decisions) == [CommandType.RESERVE]


def test_failed_payment_releases_stock_then_cancels() -> None:
    state, decisions = run(
        CREATED,
        reply(EventType.STOCK_RESERVED),
        reply(EventType.PAYMENT_FAILED, "card declined"),
        reply(EventType.STOCK_RELEASED),
    )
    assert state is not None
    assert state["status"] == OrderStatus.CANCELLED
    assert state["reason"] == "payment failed: card declined"
    assert commands(decisions) == [CommandType.RESERVE, CommandType.CHARGE, CommandType.RELEASE]
    assert statuses(decisions) == ["RESERVING", "CHARGING", "RELEASING", "CANCELLED"]


def test_deadline_while_charging_refunds_and_releases_and_waits_for_both() -> None:
    state, decisions = run(
        CREATED,
        reply(EventType.STOCK_RESERVED),
        reply(EventType.ORDER_EXPIRED, "no outcome within 120 s"),
        reply(EventType.PAYMENT_REFUNDED),
    )
    assert state is not None
    assert state["status"] == OrderStatus.RELEASING
    assert state["awaiting"] == ["release"]
    assert commands(decisions)[-2:] == [CommandType.REFUND, CommandType.RELEASE]
    final = decide(state, *reply(EventType.STOCK_RELEASED))
    assert final.state is not None
    assert final.state["status"] == OrderStatus.CANCELLED
    assert final.transition is not None
    assert final.transition["status"] == "CANCELLED"


def test_deadline_while_reserving_refunds_and_releases() -> None:
    # The state may be behind what happened: compensate both steps, each is safe
    # when its step never ran.
    state, decisions = run(CREATED, reply(EventType.ORDER_EXPIRED, "late"))
    assert state is not None
    assert state["status"] == OrderStatus.RELEASING
    assert commands(decisions) == [CommandType.RESERVE, CommandType.REFUND, CommandType.RELEASE]


def test_a_deadline_while_compensating_sends_the_missing_compensations_again() -> None:
    state, _ = run(
        CREATED,
        reply(EventType.STOCK_RESERVED),
        reply(EventType.ORDER_EXPIRED),
        reply(EventType.PAYMENT_REFUNDED),
    )
    again = decide(state, *reply(EventType.ORDER_EXPIRED))
    assert [c.type for c in again.commands] == [CommandType.RELEASE]
    assert again.transition is None


def test_deadline_for_an_order_the_saga_never_saw_compensates_and_cancels() -> None:
    state, decisions = run(
        reply(EventType.ORDER_EXPIRED, "late"),
        reply(EventType.STOCK_RELEASED),
        reply(EventType.PAYMENT_REFUNDED),
    )
    assert state is not None
    assert state["status"] == OrderStatus.CANCELLED
    assert commands(decisions) == [CommandType.REFUND, CommandType.RELEASE]


def test_duplicates_and_late_replies_send_nothing_and_change_nothing() -> None:
    state, _ = run(CREATED, reply(EventType.STOCK_RESERVED))
    for event in (
        CREATED,
        reply(EventType.STOCK_RESERVED),
        reply(EventType.STOCK_REFUSED),
        reply(EventType.STOCK_RELEASED),
        reply(EventType.PAYMENT_REFUNDED),
    ):
        assert decide(state, *event) == Decision(), event
    confirmed, _ = run(CREATED, reply(EventType.STOCK_RESERVED), reply(EventType.PAYMENT_CHARGED))
    for event in (
        reply(EventType.PAYMENT_FAILED),
        reply(EventType.ORDER_EXPIRED),
        reply(EventType.PAYMENT_CHARGED),
        CREATED,
    ):
        assert decide(confirmed, *event) == Decision(), event


def test_replies_before_the_order_are_ignored() -> None:
    for event in (EventType.STOCK_RESERVED, EventType.PAYMENT_CHARGED, EventType.STOCK_RELEASED):
        assert decide(None, *reply(event)) == Decision()
