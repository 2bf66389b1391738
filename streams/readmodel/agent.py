"""The order-status read model as a faust app: one agent, one table, exactly-once.

- **Input**: ``outbox.event.order-status`` (the orders service announces every status
  an order takes, with its version), keyed by order id.
- **State**: the table ``order-status`` (order id → the order's view as JSON), backed
  by its changelog topic: the stream's materialised view. ``exactly_once``: each
  event's table update and its offset commit are one Kafka transaction, so after a
  crash the table equals a fold of the topic (faust-streaming's at-least-once mode
  double-applies after a restart, #596; the fold is also idempotent by version).
- **A faust gap closed here**: in ``exactly_once`` mode faust-streaming 0.15.3 commits
  the transaction without first flushing the buffer that table writes go through
  (``send_soon``; only its at-least-once path flushes). A changelog record still in
  the buffer then lands in the *next* transaction, after the offsets of its event
  were committed: a crash or a stop loses it (seen: a kill lost the last ~15 updates
  of a partition). So the agent writes the local store and sends the changelog
  record itself (``changelog_topic.send``: straight to the transactional producer of
  the event's partition) before it takes the next event, which is when faust may
  commit the event's offset.
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

from consumers.incoming import InvalidMessage, parse_payload
from producers.contract import ORDER_STATUS_EVENTS, EventType
from producers.settings import ShopSettings
from relaybus.settings import Settings
from streams.envelope import header
from streams.readmodel.view import StatusEvent, fold

log = logging.getLogger("relaybus.readmodel")

APP_ID = "relaybus-order-status"
TABLE = "order-status"
CHANGELOG = f"{APP_ID}-{TABLE}-changelog"
MAX_INPUT_BYTES = 65_536


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
    brokers = [f"kafka://{host.strip()}" for host in settings.kafka_bootstrap.split(",")]
    app = faust.App(
        APP_ID,
        broker=brokers,
        store="memory://",
        processing_guarantee="exactly_once",
        topic_partitions=partitions,
        topic_replication_factor=shop.shop_replication,
        table_standby_replicas=0,
        broker_commit_interval=shop.saga_commit_interval,
        broker_session_timeout=shop.saga_session_timeout,
        broker_heartbeat_interval=max(shop.saga_session_timeout / 5, 0.5),
        consumer_auto_offset_reset="earliest",
        web_enabled=True,
        web_bind=shop.read_model_host,
        web_host=shop.read_model_host,
        web_port=shop.read_model_port,
        autodiscover=False,
        producer_acks=-1,
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
                    await store(key, parsed, event.message.partition)
                else:
                    log.warning(
                        "read model: order.status keyed %r is about another order", key[:40]
                    )
            applied[event.message.partition] = event.message.offset

    async def store(key: str, event: StatusEvent, partition: int) -> None:
        """The table update of one event, written so that its changelog record is in
        the open transaction before this event's offset can be committed (the
        module docstring says why not ``views[key] = value``)."""
        stored = views.get(key)
        value = json.dumps(
            fold(json.loads(stored) if stored else None, event), separators=(",", ":")
        )
        encoded = value.encode()
        views.data[key] = encoded  # the local store; the changelog record follows
        await views.changelog_topic.send(
            key=key,
            value=encoded,
            partition=partition,  # co-partitioned with the input
            key_serializer=views.key_serializer,  # type: ignore[attr-defined]
            value_serializer=views.value_serializer,  # type: ignore[attr-defined]
        )

    @app.page("/orders/{order_id}/")
    async def order_view(web: Any, request: Any, order_id: str) -> Any:
        if not order_id.isdigit() or len(order_id) > 19:
            return web.json({"detail": "order id must be a positive integer"}, status=422)
        # The offsets first: the view read after them is at least that fresh.
        offsets = {str(p): o for p, o in applied.items()}
        stored = views.get(order_id)
        return web.json({"view": json.loads(stored) if stored else None, "applied": offsets})

    return app
