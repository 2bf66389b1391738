"""Handlers that take event classes, on the in-memory broker (``TestBroker``); the same
paths on real Kafka and RabbitMQ are in tests/integration/test_typed_events.py."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from relaybus.consumers.app import ConsumerApp
from relaybus.consumers.testing import TestBroker
from relaybus.events import EventCatalog, event
from relaybus.message import Message
from relaybus.outbox.writer import OutboxError, describe

TOPIC = "outbox.event.parcel"


@event("parcel.sent", version=1, aggregate_type="parcel", key="parcel_id")
class SentV1(BaseModel):
    parcel_id: str
    grams: int


@event("parcel.sent", version=2, aggregate_type="parcel", key="parcel_id")
class Sent(BaseModel):
    parcel_id: str
    grams: int
    carrier: str


@event("parcel.lost", aggregate_type="parcel", key="parcel_id")
class Lost(BaseModel):
    parcel_id: str


def catalog() -> EventCatalog:
    events = EventCatalog(SentV1, Sent, Lost)
    events.upcaster("parcel.sent", from_version=1)(lambda v1: {**v1, "carrier": "post"})
    return events


def message(type_: str, payload: dict[str, Any], version: int | None) -> Message:
    base = Message.from_data(type_, "parcel", str(payload.get("parcel_id", "?")), payload)
    if version is None:
        return base
    return Message(
        type=base.type,
        aggregatetype=base.aggregatetype,
        aggregateid=base.aggregateid,
        payload=base.payload,
        schema_version=str(version),
    )


async def test_v1_and_v2_reach_the_handler_as_v2_and_a_union_dispatches_by_type() -> None:
    app = ConsumerApp("depot", events=catalog())
    seen: list[BaseModel] = []

    @app.kafka(TOPIC, group="tracking", dedupe="none")
    async def track(parcel: Sent | Lost, session: AsyncSession | None) -> None:
        seen.append(parcel)

    assert app.handlers[0].types == frozenset({"parcel.sent", "parcel.lost"})
    async with TestBroker(app) as broker:
        await broker.publish(
            message("parcel.sent", {"parcel_id": "a", "grams": 5}, 1),
            message("parcel.sent", {"parcel_id": "b", "grams": 6, "carrier": "ups"}, 2),
            message("parcel.lost", {"parcel_id": "c"}, None),
        )
        await broker.idle()
        assert broker.dead_letters(TOPIC) == []
    assert sorted(seen, key=lambda e: e.parcel_id) == [  # type: ignore[attr-defined]
        Sent(parcel_id="a", grams=5, carrier="post"),
        Sent(parcel_id="b", grams=6, carrier="ups"),
        Lost(parcel_id="c"),
    ]


@pytest.mark.parametrize(
    ("payload", "version", "reason", "detail"),
    [
        ({"parcel_id": "a", "grams": 1, "carrier": "x"}, 3, "unknown-version", "newer than"),
        ({"parcel_id": "a", "grams": 1, "carrier": "x"}, "two", "unknown-version", "not a version"),
        ({"parcel_id": "a", "grams": "heavy", "carrier": "x"}, 2, "schema", "grams: int_parsing"),
        ({"parcel_id": "a"}, 1, "schema", "grams: missing"),
    ],
)
async def test_what_cannot_become_the_class_is_dead_lettered_with_its_reason(
    payload: dict[str, Any], version: Any, reason: str, detail: str
) -> None:
    app = ConsumerApp("depot", events=catalog())
    applied: list[Sent] = []

    @app.kafka(TOPIC, group="tracking", dedupe="none")
    async def track(parcel: Sent, session: AsyncSession | None) -> None:
        applied.append(parcel)

    async with TestBroker(app) as broker:
        await broker.publish(message("parcel.sent", payload, version))  # type: ignore[arg-type]
        await broker.idle()
        letters = broker.dead_letters(TOPIC)
    assert applied == []
    assert [letter.reason for letter in letters] == [reason]
    assert detail in letters[0].headers["x-exception-message"]
    assert "heavy" not in letters[0].headers["x-exception-message"]  # locations, not values


async def test_an_untyped_handler_is_unchanged() -> None:
    app = ConsumerApp("depot")
    bodies: list[Any] = []

    @app.kafka(TOPIC, group="raw", dedupe="none")
    async def raw(message: Any, session: AsyncSession | None) -> None:
        bodies.append(message.payload)

    assert app.handlers[0].types is None
    async with TestBroker(app) as broker:
        await broker.publish(message("parcel.sent", {"parcel_id": "a"}, None))
        await broker.idle()
    assert bodies == [{"parcel_id": "a"}]


def test_the_writer_takes_an_event_instance_and_refuses_contradictions() -> None:
    agg, key, type_, body, headers = describe(
        Sent(parcel_id="p1", grams=3, carrier="dhl"), None, None, None, None, None
    )
    assert (agg, key, type_, headers) == ("parcel", "p1", "parcel.sent", {"schema_version": "2"})
    assert body.text == '{"parcel_id":"p1","grams":3,"carrier":"dhl"}'
    assert describe(Lost(parcel_id="p"), None, None, None, None, None)[4] is None  # v1
    with pytest.raises(OutboxError, match="contradicts"):
        describe(Lost(parcel_id="p"), None, None, "parcel.found", None, None)
    with pytest.raises(OutboxError, match="own payload"):
        describe(Lost(parcel_id="p"), None, None, None, {"x": 1}, None)

    class Plain(BaseModel):
        parcel_id: str

    with pytest.raises(OutboxError, match="not declared"):
        describe(Plain(parcel_id="p"), None, None, None, None, None)
    with pytest.raises(OutboxError, match="give an event instance"):
        describe(None, "parcel", None, "parcel.sent", {}, None)
