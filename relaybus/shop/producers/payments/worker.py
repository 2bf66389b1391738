"""``relaybus worker payments``: charges and refunds for the saga, through the gateway."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from relaybus.consumers.app import ConsumerApp
from relaybus.consumers.breaker import CircuitBreaker
from relaybus.consumers.incoming import Incoming
from relaybus.consumers.policy import RetryPolicy
from relaybus.outbox.writer import Outbox
from relaybus.settings import Settings
from relaybus.shop.contract import (
    PAYMENT_AGGREGATE,
    PAYMENT_COMMANDS,
    CommandType,
    EventType,
    StepCommand,
    parse,
)
from relaybus.shop.producers.payments.client import GatewayCharge, GatewayClient
from relaybus.shop.settings import ShopSettings

_EXISTING = text("SELECT status, reason FROM payments.charges WHERE order_id = :id FOR UPDATE")
_RECORD = text(
    "INSERT INTO payments.charges (order_id, charge_key, amount_cents, status, "
    "gateway_charge_id, reason) VALUES (:id, :key, :amount, :status, :charge_id, :reason)"
)
_REFUNDED = text(
    "UPDATE payments.charges SET status = 'refunded', refunded_at = now() "
    "WHERE order_id = :id AND status = 'charged'"
)
# Gateway status -> ours.
_STATUS = {"charged": "charged", "declined": "failed", "refunded": "refunded", "voided": "voided"}


def charge_key(order_id: int) -> str:
    """The gateway idempotency key of an order's charge (one charge per order)."""
    return f"order-{order_id}"


def payments_app(settings: Settings | None = None, shop: ShopSettings | None = None) -> ConsumerApp:
    """Handles ``payment.charge`` and ``payment.refund`` from the saga.

    One charge per order (the ``payments.charges`` row and the gateway key): a repeated
    command is answered again from that row, never charged twice. The gateway call
    happens inside the handler's transaction; its result, the
    ``payments.charges`` row and the reply event (``payment.charged`` /
    ``payment.failed`` / ``payment.refunded``) commit together. If the transaction is
    lost after the gateway charged, the redelivered command charges with the same key
    and the gateway answers with the charge it already made. A gateway that does not
    answer fails the message (retried in place; ``ordered``); five failures in a row
    open the breaker and consumption pauses until a probe gets through.
    """
    settings, shop = settings or Settings(), shop or ShopSettings()
    app = ConsumerApp("payments")
    # The relay's partition count: a row written for another count lands in a
    # partition no relay drains.
    writer = Outbox.from_settings(settings)
    gateway = GatewayClient(
        shop.gateway_base_url, timeout=shop.payment_timeout, retries=shop.payment_retries
    )
    breaker = CircuitBreaker("payment-gateway", failure_threshold=5, reset_timeout=5.0)

    @app.kafka(
        PAYMENT_COMMANDS,
        group="payments",
        ordered=True,
        # Idempotent by the order's own rows, not by message id: a command sent again
        # (the saga may resend one after a restart or a deadline) is answered again.
        dedupe="none",
        sql=True,
        types=[CommandType.CHARGE.value, CommandType.REFUND.value],
        require_object=True,
        retry=RetryPolicy(max_attempts=8, initial_delay=0.5, max_delay=10.0),
        timeout=4 * (shop.payment_retries + 1) * shop.payment_timeout + 5,
        breaker=breaker,
        concurrency=32,
        # One command per transaction: a slow gateway call holds up nobody else's.
        batch_size=1,
    )
    async def payment_command(message: Incoming, session: AsyncSession | None) -> None:
        assert session is not None  # inbox handlers always get one
        command = parse(StepCommand, message.payload)
        order_id = command.order_id
        key = charge_key(order_id)
        existing = (await session.execute(_EXISTING, {"id": order_id})).one_or_none()
        body: dict[str, object] = {"order_id": order_id}
        if message.type == CommandType.CHARGE:
            if existing is not None:  # answered before (a step resent under a new id)
                event, body["reason"] = _reply(existing.status, existing.reason)
            else:
                charge = await gateway.charge(key, command.amount_cents)
                await _record(session, order_id, charge)
                event, body["reason"] = _reply(_STATUS[charge.status], charge.reason)
                body["amount_cents"] = charge.amount_cents
        else:
            charge = await gateway.refund(key)
            if existing is None:
                await _record(session, order_id, charge)
            elif existing.status == "charged":
                await session.execute(_REFUNDED, {"id": order_id})
            event = EventType.PAYMENT_REFUNDED
            body["amount_cents"] = charge.refunded_cents
        await writer.enqueue(
            session,
            aggregate_type=PAYMENT_AGGREGATE,
            aggregate_id=str(order_id),
            type=event,
            payload=body,
            headers={"causation_id": str(message.id)},
        )

    return app


def _reply(status: str, reason: str | None) -> tuple[EventType, str | None]:
    if status == "charged":
        return EventType.PAYMENT_CHARGED, None
    return EventType.PAYMENT_FAILED, reason or status


async def _record(session: AsyncSession, order_id: int, charge: GatewayCharge) -> None:
    await session.execute(
        _RECORD,
        {
            "id": order_id,
            "key": charge.key,
            "amount": charge.amount_cents,
            "status": _STATUS[charge.status],
            "charge_id": charge.charge_id,
            "reason": charge.reason,
        },
    )
