"""The order saga as a faust-streaming app: one agent, one table, exactly-once.

- **Input**: ``outbox.event.order``, ``outbox.event.inventory``,
  ``outbox.event.payment`` (what the services' outboxes publish), all keyed by order
  id and co-partitioned (equal partition counts), so an order's events meet in one
  agent instance, in per-partition order.
- **State**: the faust table ``order-sagas`` (key: order id), backed by its changelog
  topic; a restarted or rebalanced agent recovers it from there and continues.
- **Output**: commands to ``shop.inventory.commands`` / ``shop.payment.commands`` and
  transitions to ``shop.order.transitions``, with relaybus's envelope headers, so the
  services' ``ConsumerApp`` workers decode them like any relayed event.
- **Guarantee**: ``processing_guarantee="exactly_once"``: each input's table update,
  sends and offset commit are one Kafka transaction. (In at-least-once mode a table
  double-applies inputs after a restart with input waiting: faust-streaming #596.)
  Readers use ``isolation_level=read_committed``. Command ids are deterministic
  (``step_id``), so even a resend outside a transaction is deduplicated by the inbox.
- **Bad input**: an event that is not JSON, has no known type or does not fit its
  schema is logged and skipped (the services' workers dead-letter what *they* read;
  the saga's inputs are written only by the services' outboxes).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import faust
from pydantic import BaseModel

from relaybus.consumers.incoming import InvalidMessage, parse_payload
from relaybus.events import EventCatalog, EventRefused, parse_version
from relaybus.settings import Settings
from relaybus.shop.contract import (
    INVENTORY_COMMANDS,
    ORDER_TRANSITIONS,
    PAYMENT_COMMANDS,
    SAGA_INPUTS,
    SAGA_OUTPUTS,
    TRANSITION,
    CommandType,
    EventType,
    OrderCreated,
    OrderExpired,
    PaymentCharged,
    PaymentFailed,
    PaymentRefunded,
    StockRefused,
    StockReleased,
    StockReserved,
    shop_events,
    step_id,
)
from relaybus.shop.settings import ShopSettings
from relaybus.shop.streams.faustapp import shop_faust_app, write_through
from relaybus.shop.streams.saga.machine import Command, decide
from relaybus.streams.envelope import (
    envelope,
    header,
    record_key,
    record_span,
    skips_unforeseen,
    traced_headers,
)
from relaybus.tracing import tracer

log = logging.getLogger("relaybus.saga")

# What the saga reads each input as: the newest class of its type (older versions are
# lifted by the shop's upcasters first).
_SCHEMAS: dict[str, type[BaseModel]] = {
    EventType.ORDER_CREATED.value: OrderCreated,
    EventType.ORDER_EXPIRED.value: OrderExpired,
    EventType.STOCK_RESERVED.value: StockReserved,
    EventType.STOCK_REFUSED.value: StockRefused,
    EventType.STOCK_RELEASED.value: StockReleased,
    EventType.PAYMENT_CHARGED.value: PaymentCharged,
    EventType.PAYMENT_FAILED.value: PaymentFailed,
    EventType.PAYMENT_REFUNDED.value: PaymentRefunded,
}
_COMMAND_TOPIC = {
    CommandType.RESERVE: INVENTORY_COMMANDS,
    CommandType.RELEASE: INVENTORY_COMMANDS,
    CommandType.CHARGE: PAYMENT_COMMANDS,
    CommandType.REFUND: PAYMENT_COMMANDS,
}
MAX_INPUT_BYTES = 1_048_576
APP_ID = "relaybus-saga"
TABLE = "order-sagas"
# faust's name for the table's changelog topic.
CHANGELOG = f"{APP_ID}-{TABLE}-changelog"


@skips_unforeseen
def read_input(
    headers: Any, value: bytes | None, events: EventCatalog
) -> tuple[str, dict[str, Any]] | None:
    """An input event as ``(type, payload)``, or None (logged) if it is not one of the
    saga's events, is of a version ``events`` cannot lift to the saga's, or does not
    fit its schema. An older version is upcast first (``order.created`` v1 → v2)."""
    event_type = header(headers, "type")
    schema = _SCHEMAS.get(event_type or "")
    if schema is None or event_type is None:
        log.warning("saga: skipping an event of type %r", (event_type or "")[:80])
        return None
    if value is None or len(value) > MAX_INPUT_BYTES:
        log.warning("saga: skipping a %s without a body or over the size cap", event_type)
        return None
    try:
        # The same bounded parser the workers use: no recursion, size or number bombs.
        body = parse_payload(value, require_object=True)
        version = parse_version(header(headers, "schema_version"))
        payload = events.read(schema, version, body).model_dump(mode="json")
    except InvalidMessage as err:
        log.warning("saga: skipping a %s that is not readable: %.300s", event_type, err)
        return None
    except EventRefused as err:
        log.warning("saga: skipping a %s (%s): %.300s", event_type, err.reason, err.detail)
        return None
    return event_type, payload


def create_saga_app(settings: Settings, shop: ShopSettings) -> faust.App:
    """The saga's faust app (nothing connects until its worker starts)."""
    events = shop_events()
    app = shop_faust_app(APP_ID, settings, shop, shop.shop_partitions, producer_linger=0.005)
    inputs = app.topic(*SAGA_INPUTS, key_serializer="raw", value_serializer="raw", allow_empty=True)
    outputs = {
        name: app.topic(
            name,
            key_serializer="raw",
            value_serializer="raw",
            partitions=shop.shop_partitions,
            replicas=shop.shop_replication,
        )
        for name in SAGA_OUTPUTS
    }
    sagas = app.Table(
        TABLE,
        default=None,
        partitions=shop.shop_partitions,
        key_type=str,
        # The state as JSON bytes, encoded here: with ``value_type=dict`` faust cannot
        # read the changelog back (recovery fails with "type object 'dict' has no
        # attribute 'from_data'", and a restarted agent would forget every saga).
        value_type=bytes,
    )

    @app.task  # type: ignore[untyped-decorator]
    async def declare_outputs() -> None:
        # faust creates only its own internal topics: the ones it writes to are
        # declared here, with the shop's partition count (else auto-created with 1).
        for topic in outputs.values():
            await topic.maybe_declare()

    async def send(
        topic: str,
        message_type: str,
        key: str,
        message_id: str,
        body: dict[str, Any],
        causation: str | None,
    ) -> None:
        headers = envelope(message_type, key, message_id, causation)
        traced = tracer()
        if traced.enabled:
            # A child of the saga step's span: the command's consumer continues it.
            with traced.span(
                f"send {topic}",
                kind="producer",
                attributes={
                    "messaging.operation.type": "send",
                    "messaging.system": "kafka",
                    "messaging.destination.name": topic,
                    "messaging.message.id": message_id,
                    "relaybus.type": message_type,
                },
            ) as span:
                headers = traced_headers(headers, span.traceparent)
        await outputs[topic].send(
            key=key.encode(),
            value=json.dumps(body, separators=(",", ":")).encode(),
            headers=headers,
        )

    @app.agent(inputs)
    async def order_saga(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            traced = tracer()
            if not traced.enabled:
                await step(event)
                continue
            with record_span(
                traced,
                f"saga {header(event.headers, 'type') or 'unknown'}",
                event.headers,
                {
                    "messaging.operation.type": "process",
                    "messaging.destination.name": str(event.message.topic),
                    "messaging.message.id": (header(event.headers, "id") or "")[:64],
                    "relaybus.processor": "saga",
                },
            ) as span:
                span.set("relaybus.saga.step", await step(event))

    async def step(event: Any) -> str:
        """One input: decide, send its commands and transition, store the state; what
        was decided (for the step's span)."""
        key = record_key(event.key)
        parsed = read_input(event.headers, event.value, events)
        if key is None or parsed is None:
            if parsed is not None:
                log.warning("saga: skipping a %s whose key is not UTF-8", parsed[0])
            return "skipped"
        event_type, payload = parsed
        if str(payload.get("order_id")) != key:
            log.warning(
                "saga: %s keyed %r is about order %r; skipped",
                event_type,
                key[:40],
                payload.get("order_id"),
            )
            return "skipped"
        stored = sagas.get(key)
        try:
            decision = decide(json.loads(stored) if stored else None, event_type, payload)
        except Exception:
            # A state this code cannot read (or a bug of ours for this order): that
            # order's event is skipped and logged for an operator; the agent goes
            # on with the other orders.
            log.exception("saga: cannot decide %s for order %r", event_type, key[:40])
            return "skipped"
        causation = header(event.headers, "id")
        order = (decision.state or {}).get("order", {})
        for command in decision.commands:
            await send(
                _COMMAND_TOPIC[command.type],
                command.type.value,
                key,
                str(step_id(key, command.step)),
                _command_body(command, order),
                causation,
            )
        if decision.transition is not None:
            step_number = decision.transition["step"]
            await send(
                ORDER_TRANSITIONS,
                TRANSITION,
                key,
                # Step *and* status: a saga that lost its state numbers steps
                # from 1 again, and its transitions must not share an id (and be
                # skipped as duplicates) with the first run's.
                str(step_id(key, f"transition-{step_number}-{decision.transition['status']}")),
                decision.transition,
                causation,
            )
        if decision.state is not None:
            # Not ``sagas[key] = …``: see ``write_through``.
            await write_through(
                sagas,
                key,
                json.dumps(decision.state, separators=(",", ":")).encode(),
                event.message.partition,  # the changelog is co-partitioned
            )
        return describe_decision(decision.commands, decision.transition)

    return app


def describe_decision(commands: Sequence[Command], transition: dict[str, Any] | None) -> str:
    """The saga step taken, for its span: the commands sent and the transition."""
    sent = ",".join(c.type.value for c in commands) or "none"
    return f"commands={sent} transition={transition['status'] if transition else 'none'}"


def _command_body(command: Command, order: dict[str, Any]) -> dict[str, Any]:
    return {
        "order_id": order["order_id"],
        "step": command.step,
        "items": order.get("items", []),
        "amount_cents": order.get("amount_cents", 0),
    }
