"""Folding ``order.status`` events into an order's view (pure)."""

from __future__ import annotations

from typing import Any

from relaybus.shop.contract import OrderStatusChanged as StatusEvent

__all__ = ["StatusEvent", "fold"]


def fold(view: dict[str, Any] | None, event: StatusEvent) -> dict[str, Any]:
    """``view`` with ``event`` applied. Idempotent and order-tolerant: a version the
    view has already is ignored, and the status is always the highest version's, so
    the view depends only on the set of events seen."""
    current: dict[str, Any] = dict(view) if view else {"id": str(event.order_id), "history": []}
    history = list(current["history"])
    if any(step["step"] == event.version for step in history):
        return current
    history.append({"step": event.version, "status": event.status.value, "reason": event.reason})
    history.sort(key=lambda step: step["step"])
    current["history"] = history
    latest = history[-1]
    current.update(status=latest["status"], reason=latest["reason"], version=latest["step"])
    if event.customer is not None:
        current["customer"] = event.customer
    if event.items is not None:
        current["items"] = [line.model_dump() for line in event.items]
    if event.amount_cents is not None:
        current["amount_cents"] = event.amount_cents
    return current
