"""The order-status read model as a faust app: one agent, one table, exactly-once state.

- **Input**: ``outbox.event.order-status`` (the orders service announces every status
  an order takes, with its version), keyed by order id.
- **State**: the table ``order-status`` (order id → the order's view as JSON), backed
  by its changelog topic: the stream's materialised view.
- **Guarantee: the table equals a fold of the topic** (exactly-once *state*), also
  after a crash. The fold is idempotent and order-tolerant (keyed by version), so an
  event applied twice changes nothing; what must never happen is an event whose
  offset is committed while its table update is not durable. The app therefore runs
  faust's **at-least-once** mode, where each changelog record is published and
  acknowledged before the offset of its event is committed (``write_through``).
  faust's ``exactly_once`` mode was tried first and lost updates: in CI an input
  offset (partition 1, offset 49) was committed while the changelog record of its
  update (offset 55) sat in a transaction that was aborted, so the restarted worker
  never applied it. faust-streaming's at-least-once double application after a
  restart (#596) is harmless here. Every start also replays the input from its
  beginning (``relaybus.shop.streams.readmodel.run.replay_from_start``), which repairs anything a
  crash lost. The saga, whose decisions are not an idempotent
  fold, stays ``exactly_once`` (``docs/saga.md`` says what it does not rely on).
- **Table writes** go through ``relaybus.shop.streams.faustapp.write_through`` (see there).
- **Served** over faust's web server (loopback by default): ``GET /orders/{id}/`` →
  ``{"view": …|null, "applied": {"<partition>": offset}}`` where ``offset`` is the
  last event of that partition this process applied (absent: none since it
  started). The orders API uses it to know the view is at least as fresh as the
  invalidations it has seen.
- **Bad input** (not JSON, wrong type, does not fit): logged and skipped.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import faust
from pydantic import ValidationError

from relaybus.consumers.incoming import InvalidMessage, parse_payload
from relaybus.settings import Settings
from relaybus.shop.contract import ORDER_STATUS_EVENTS, EventType
from relaybus.shop.settings import ShopSettings
from relaybus.shop.streams.faustapp import shop_faust_app, write_through
from relaybus.shop.streams.readmodel.view import StatusEvent, fold
from relaybus.streams.envelope import header, record_span, skips_unforeseen
from relaybus.tracing import tracer

log = logging.getLogger("relaybus.readmodel")

APP_ID = "relaybus-order-status"
TABLE = "order-status"
CHANGELOG = f"{APP_ID}-{TABLE}-changelog"
MAX_INPUT_BYTES = 65_536


@skips_unforeseen
def read_event(headers: Any, value: bytes | None) -> StatusEvent | None:
    """An ``order.status`` event, or None (logged) if the record is not one."""
    if header(headers, "type") != EventType.ORDER_STATUS.value:
        log.warning("read model: skipping a record that is not order.status")
        return None
    if value is None or len(value) > MAX_INPUT_BYTES:
        log.warning("read model: skipping an order.status without a body or over the cap")
        return None
    try:
        return StatusEvent.model_validate(parse_payload(value, require_object=True))
    except (InvalidMessage, ValidationError) as err:
        log.warning("read model: skipping an unreadable order.status: %.300s", err)
        return None


def create_read_model_app(settings: Settings, shop: ShopSettings, partitions: int) -> faust.App:
    """The read model's faust app (nothing connects until its worker starts);
    ``partitions``: the input topic's partition count (the table's too)."""
    app = shop_faust_app(
        APP_ID,
        settings,
        shop,
        partitions,
        # An idempotent fold: at-least-once gives exactly-once state (module docstring).
        processing_guarantee="at_least_once",
        web_enabled=True,
        web_bind=shop.read_model_host,
        web_host=shop.read_model_host,
        web_port=shop.read_model_port,
    )
    events = app.topic(
        ORDER_STATUS_EVENTS, key_serializer="raw", value_serializer="raw", allow_empty=True
    )
    views = app.Table(TABLE, default=None, partitions=partitions, key_type=str, value_type=bytes)
    applied: dict[int, int] = {}

    @app.agent(events)
    async def order_status(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            key = event.key.decode(errors="replace") if isinstance(event.key, bytes) else None
            parsed = read_event(event.headers, event.value)
            if key is not None and parsed is not None:
                if str(parsed.order_id) == key:
                    traced = tracer()
                    if traced.enabled:
                        with record_span(
                            traced,
                            "read model order.status",
                            event.headers,
                            {
                                "messaging.operation.type": "process",
                                "messaging.destination.name": str(event.message.topic),
                                "relaybus.processor": "read-model",
                                "relaybus.order.status": str(parsed.status)[:40],
                            },
                        ):
                            await store(key, parsed, event.message.partition)
                    else:
                        await store(key, parsed, event.message.partition)
                else:
                    log.warning(
                        "read model: order.status keyed %r is about another order", key[:40]
                    )
            applied[event.message.partition] = event.message.offset

    async def store(key: str, event: StatusEvent, partition: int) -> None:
        stored = views.get(key)
        before = json.loads(stored) if stored else None
        if before is not None and any(s["step"] == event.version for s in before["history"]):
            # Already applied (the replay on start, a redelivery): the fold would
            # change nothing, so nothing is written, and the replay runs at the speed
            # of reading, not of one acknowledged changelog record per event.
            return
        view = fold(before, event)
        await write_through(views, key, json.dumps(view, separators=(",", ":")).encode(), partition)

    @app.page("/orders/{order_id}/")
    async def order_view(web: Any, request: Any, order_id: str) -> Any:
        if not order_id.isdigit() or len(order_id) > 19:
            return web.json({"detail": "order id must be a positive integer"}, status=422)
        # The offsets first: the view read after them is at least that fresh.
        offsets = {str(p): o for p, o in applied.items()}
        stored = views.get(order_id)
        return web.json({"view": json.loads(stored) if stored else None, "applied": offsets})

    return app
