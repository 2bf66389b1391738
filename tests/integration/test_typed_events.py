"""Typed events on the real brokers: written through the outbox as instances (v2) and
as dicts (v1, as an older producer wrote them), relayed, and read by a typed handler
as v2; records of a newer or garbled version and payloads that do not fit, written
by a plain client (not relaybus), are dead-lettered with ``unknown-version`` or
``schema``. An old event in the outbox archive, replayed into a new handler, is
applied as v2."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import aio_pika
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.brokers.rabbitmq import EXCHANGE
from relaybus.consumers.naming import dlq_name, retry_name
from relaybus.db import session_factory
from relaybus.outbox.writer import Outbox
from relaybus.settings import Settings
from tests.support.cli import run_cli
from tests.support.consumerdata import (
    Raw,
    effects,
    event,
    prepare_effects,
    running,
    send,
    unique,
)
from tests.support.outboxdata import read_topic
from tests.support.poll import eventually
from tests.support.relayproc import relay_fleet
from tests.support.typed_apps import ParcelEvents, parcel_events, tracking_app


def hostile(type_: str, version: str, body: dict[str, object]) -> Raw:
    """A record a plain client wrote: relaybus's envelope, any ``schema_version``."""
    raw = event(f"{type_}-hostile", body, type=type_)
    return Raw(raw.key, raw.body, {**raw.headers, "schema_version": version})


async def _write(engine: AsyncEngine, agg: str, parcels: ParcelEvents) -> None:
    """p1 as an old producer wrote it (dict, no version header), p2 as a v2 instance,
    p3 as a v1 instance (no header either)."""
    outbox = Outbox()
    async with session_factory(engine)() as session, session.begin():
        await outbox.enqueue(
            session,
            aggregate_type=agg,
            aggregate_id=f"{agg}-p1",
            type=parcels.name,
            payload={"parcel_id": f"{agg}-p1", "grams": 300},
        )
        v2 = parcels.v2.model_validate({"parcel_id": f"{agg}-p2", "grams": 20, "carrier": "dhl"})
        await outbox.enqueue(session, v2, aggregate_type=agg)
        v1 = parcels.v1.model_validate({"parcel_id": f"{agg}-p3", "grams": 7})
        await outbox.enqueue(session, v1, aggregate_type=agg)


@pytest.mark.parametrize("broker", ["kafka", "rabbitmq"])
async def test_v1_and_v2_apply_as_v2_and_bad_versions_are_dead_lettered(
    broker: str, settings: Settings, engine: AsyncEngine, tmp_path: Path
) -> None:
    await prepare_effects(engine)
    tag = unique("parcel").replace("-", "")
    parcels = parcel_events(tag)
    agg = tag
    name = f"track-{tag}"
    source = f"outbox.event.{agg}" if broker == "kafka" else f"q.{tag}"
    app = tracking_app(name, parcels, broker, source)
    routes = [{"pattern": f"{tag}.*", "brokers": [broker]}]
    try:
        async with running(app, settings):
            with relay_fleet(tmp_path, routes) as fleet:
                fleet.start(f"typed-{tag}")
                await _write(engine, agg, parcels)

                async def applied() -> bool:
                    return len(await effects(engine, name)) >= 3

                await eventually(applied, within=60, what="3 parcels applied")
            bad = [
                hostile(parcels.name, "3", {"parcel_id": "x3", "grams": 1, "carrier": "c"}),
                hostile(parcels.name, "two", {"parcel_id": "x4", "grams": 1, "carrier": "c"}),
                hostile(parcels.name, "2", {"parcel_id": "x5", "grams": "heavy", "carrier": "c"}),
                hostile(parcels.name, "1", {"parcel_id": "x6"}),
            ]
            await send(settings, broker, source if broker == "kafka" else parcels.name, bad)
            letters = await _dead_letters(settings, broker, source, len(bad))
        rows = sorted((r["key"], r["n"]) for r in await effects(engine, name))
        assert rows == [(f"{tag}-p1/post", 300), (f"{tag}-p2/dhl", 20), (f"{tag}-p3/post", 7)]
        by_id = {h["id"]: h for h in letters}
        reasons = [by_id[r.id]["x-dlq-reason"] for r in bad]
        assert reasons == ["unknown-version", "unknown-version", "schema", "schema"]
        assert "grams: int_parsing" in by_id[bad[2].id]["x-exception-message"]
        assert "heavy" not in by_id[bad[2].id]["x-exception-message"]
        assert "grams: missing" in by_id[bad[3].id]["x-exception-message"]
        if broker == "rabbitmq":
            await _archive_replay_into_a_new_reader(settings, engine, parcels)
    finally:
        if broker == "rabbitmq":
            await _delete_queues(settings, [source, f"q.{tag}.late"])


async def _dead_letters(
    settings: Settings, broker: str, source: str, count: int
) -> list[dict[str, str]]:
    found: list[dict[str, str]] = []

    async def arrived() -> bool:
        found.clear()
        if broker == "kafka":
            for record in await read_topic(settings.kafka_bootstrap, dlq_name(source)):
                found.append(dict(record.headers))
        else:
            found.extend(await _peek_queue(settings, dlq_name(source)))
        return len(found) >= count

    await eventually(arrived, within=60, what=f"{count} dead letters")
    return found


async def _peek_queue(settings: Settings, queue: str) -> list[dict[str, str]]:
    connection = await aio_pika.connect(settings.rabbitmq)
    try:
        channel = await connection.channel()
        declared = await channel.get_queue(queue)
        out = []
        messages = []
        while (message := await declared.get(no_ack=False, fail=False)) is not None:
            messages.append(message)
            out.append({k: str(v) for k, v in (message.headers or {}).items()})
        for message in messages:
            await message.nack(requeue=True)
        return out
    finally:
        await connection.close()


async def _archive_replay_into_a_new_reader(
    settings: Settings, engine: AsyncEngine, events_: ParcelEvents
) -> None:
    """A reader deployed after the events were written (a new queue): the archive's
    window replayed into it, v1 rows included, is applied as v2."""
    late = f"late-{events_.name}"
    app = tracking_app(late, events_, "rabbitmq", f"q.{events_.name.removesuffix('.sent')}.late")
    began = datetime.now(UTC)
    async with running(app, settings):
        env = {"RELAYBUS_ROUTES": json.dumps([{"pattern": "*", "brokers": ["rabbitmq"]}])}
        since = began.replace(microsecond=0).timestamp() - 600
        proc = run_cli(
            "replay", EXCHANGE, "--broker", "rabbitmq",
            "--since", datetime.fromtimestamp(since, UTC).isoformat(),
            "--type", events_.name, "--yes", "--json", env=env,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["sent"] == 3

        async def applied() -> bool:
            return len(await effects(engine, late)) >= 3

        await eventually(applied, within=60, what="the archived parcels applied by the new reader")
    tag = events_.name.removesuffix(".sent")
    rows = sorted((r["key"], r["n"]) for r in await effects(engine, late))
    assert rows == [(f"{tag}-p1/post", 300), (f"{tag}-p2/dhl", 20), (f"{tag}-p3/post", 7)]


async def _delete_queues(settings: Settings, queues: list[str]) -> None:
    connection = await aio_pika.connect(settings.rabbitmq)
    try:
        channel = await connection.channel()
        for queue in queues:
            for name in (queue, dlq_name(queue), *(retry_name(queue, n) for n in (1, 2, 3))):
                await channel.queue_delete(name)
            await channel.queue_delete(f"{queue}.retry.due")
    finally:
        await connection.close()
