"""Event classes and a typed handler for tests on the real brokers.

The classes are made per test (``parcel_events(tag)``) so that each test's event type,
topic and routing key are its own; the handler's annotation is set to the test's class
(what ``from __future__ import annotations`` would leave as a string to resolve)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from relaybus.consumers.app import ConsumerApp
from relaybus.consumers.incoming import Incoming
from relaybus.events import EventCatalog, event


@dataclass(frozen=True)
class ParcelEvents:
    """``name`` = ``<tag>.sent``: v1 (``parcel_id``, ``grams``) and v2 (+ required ``carrier``),
    the catalog with the v1 → v2 upcaster (carrier "post")."""

    name: str
    v1: type[BaseModel]
    v2: type[BaseModel]
    catalog: EventCatalog


def parcel_events(tag: str) -> ParcelEvents:
    type_ = f"{tag}.sent"
    v1 = event(type_, version=1, key="parcel_id")(
        type("ParcelSentV1", (BaseModel,), {"__annotations__": {"parcel_id": str, "grams": int}})
    )
    v2 = event(type_, version=2, key="parcel_id")(
        type(
            "ParcelSent",
            (BaseModel,),
            {"__annotations__": {"parcel_id": str, "grams": int, "carrier": str}},
        )
    )
    catalog = EventCatalog(v1, v2)
    catalog.upcaster(type_, from_version=1)(lambda old: {**old, "carrier": "post"})
    return ParcelEvents(type_, v1, v2, catalog)


def tracking_app(name: str, events: ParcelEvents, broker: str, source: str) -> ConsumerApp:
    """Records each parcel it receives as a ``consumer_effects`` row: ``key`` the
    parcel id and carrier, ``n`` the grams."""
    app = ConsumerApp(name, events=events.catalog)

    async def track(parcel: Any, session: AsyncSession | None, message: Incoming) -> None:
        assert session is not None
        await session.execute(
            text(
                "INSERT INTO consumer_effects (consumer, message_id, key, n, attempt) "
                "VALUES (:c, :id, :k, :n, :a)"
            ),
            {
                "c": name,
                "id": message.id,
                "k": f"{parcel.parcel_id}/{parcel.carrier}",
                "n": parcel.grams,
                "a": message.attempt,
            },
        )

    track.__annotations__ = {"parcel": events.v2, "session": Any, "message": Incoming}
    if broker == "kafka":
        app.kafka(source, group=name, name=name)(track)
    else:
        app.rabbitmq(source, binding=events.name, name=name)(track)
    return app
