"""``relaybus replay TOPIC --shadow module:attr``: a recorded window through new handler
code, with nothing of it visible to the live system (``relaybus.consumers.shadow``).

Kafka: the window is read with assigned partitions and no consumer group (nothing
joined, nothing committed); the live dead letters are read from ``<topic>.dlq`` the
same way. RabbitMQ keeps no log: the window comes from the outbox archive (published
rows, the same ids), each message offered to the RabbitMQ handlers whose binding
matches its type; the live comparison is the inbox (reading a live dead-letter queue
would take its messages, even if only to requeue them).
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime

import typer
from rich.table import Table

from relaybus import headers as rh
from relaybus.brokers.kafka_admin import list_topics, time_window
from relaybus.brokers.kafka_window import read_window
from relaybus.consumers.naming import dlq_name
from relaybus.consumers.shadow import (
    Delivery,
    ShadowReport,
    ShadowRunner,
    kafka_handlers,
    rabbit_handlers,
)
from relaybus.consumers.worker import WorkerNotFound, load_app
from relaybus.db import create_engine
from relaybus.outbox.archive_replay import archived_messages
from relaybus.settings import Settings
from relaybus.terminal import make_console, plain


class ShadowError(ValueError):
    """The shadow run cannot start (what to fix says)."""


def _key(raw: bytes | None) -> str:
    return raw.decode("utf-8", "replace")[:255] if raw else ""


async def shadow_kafka(
    settings: Settings, topic: str, app_name: str, since_ms: int, until_ms: int
) -> ShadowReport:
    app = load_app(app_name)
    handlers = kafka_handlers(app, topic)
    if not handlers:
        raise ShadowError(f"{app_name} has no handler of Kafka topic {topic!r}")
    windows = await time_window(settings.kafka, topic, since_ms, until_ms)
    engine = create_engine(settings.database_url, pool_size=2)
    try:
        runner = ShadowRunner(engine, handlers)
        live_dead = await _live_dead_letters(settings, topic, since_ms)
        async for batch in read_window(settings.kafka, topic, windows):
            for record in batch:
                await runner.run(
                    Delivery(
                        record.value,
                        record.headers,
                        _key(record.key),
                        topic,
                        record.partition,
                        record.offset,
                    )
                )
            await runner.compare_with_live(live_dead)
        return runner.report
    finally:
        await engine.dispose()


async def _live_dead_letters(
    settings: Settings, topic: str, since_ms: int
) -> dict[str, set[uuid.UUID]]:
    """Handler name -> ids in ``<topic>.dlq`` dead-lettered since the window opened."""
    dlq = dlq_name(topic)
    found: dict[str, set[uuid.UUID]] = {}
    if dlq not in await list_topics(settings.kafka):
        return found
    windows = await time_window(settings.kafka, dlq, since_ms, None)
    async for batch in read_window(settings.kafka, dlq, windows):
        for record in batch:
            headers = {
                name: value.decode("utf-8", "replace")
                for name, value in record.headers
                if name in ("id", rh.CONSUMER)
            }
            try:
                message_id = uuid.UUID(headers.get("id", "")[:64])
            except ValueError:
                continue  # a letter without a usable id cannot be compared
            found.setdefault(headers.get(rh.CONSUMER, ""), set()).add(message_id)
    return found


async def shadow_archive(
    settings: Settings, app_name: str, since: datetime, until: datetime
) -> ShadowReport:
    app = load_app(app_name)
    handlers = rabbit_handlers(app)
    if not handlers:
        raise ShadowError(f"{app_name} has no RabbitMQ handler")
    engine = create_engine(settings.database_url, pool_size=2)
    try:
        runner = ShadowRunner(engine, handlers)
        async for batch in archived_messages(engine, since, until, None):
            for message in batch:
                await runner.run(
                    Delivery(
                        message.payload,
                        list(message.headers().items()),
                        message.aggregateid,
                        "archive",
                    ),
                    routing_key=message.type,
                )
            await runner.compare_with_live({})
        return runner.report
    finally:
        await engine.dispose()


async def run_shadow(
    settings: Settings, broker: str, topic: str, app_name: str, since: datetime, until: datetime
) -> ShadowReport:
    """The shadow run ``relaybus replay --shadow`` asked for; a bad ``--shadow`` (not
    importable, no handler of the topic) is a usage error."""
    try:
        if broker == "rabbitmq":
            return await shadow_archive(settings, app_name, since, until)
        return await shadow_kafka(
            settings, topic, app_name, int(since.timestamp() * 1000), int(until.timestamp() * 1000)
        )
    except (WorkerNotFound, ShadowError) as err:
        raise typer.BadParameter(str(err), param_hint="--shadow") from None


def show_shadow(report: ShadowReport, as_json: bool) -> None:
    """Print ``report``: outcomes per handler and type, reasons, exception excerpts,
    captured sends, the live comparison and every regression's id."""
    if as_json:
        typer.echo(json.dumps(report.as_dict()))
        return
    console = make_console()
    outcomes = Table("handler", "type", "outcome", "count", title="shadow outcomes")
    for (handler, type_, outcome), count in sorted(report.counts.items()):
        outcomes.add_row(plain(handler), plain(type_), outcome, str(count))
    console.print(outcomes)
    if report.reasons:
        reasons = Table("handler", "type", "reason", "count", title="dead-lettered or failed")
        for (handler, type_, reason), count in sorted(report.reasons.items()):
            reasons.add_row(plain(handler), plain(type_), plain(reason), str(count))
        console.print(reasons)
    for (handler, error), excerpt in sorted(report.excerpts.items()):
        console.print(plain(f"{handler}: {error}\n{excerpt}"))
    if report.captured:
        sends = Table("handler", "type", "captured sends", title="outbound (not published)")
        for (handler, type_), count in sorted(report.captured.items()):
            sends.add_row(plain(handler), plain(type_), str(count))
        console.print(sends)
    for line in report.skipped:
        console.print(plain(f"skipped {line}"))
    console.print(
        f"live: {report.live_applied} applied, {report.live_dead} dead-lettered; "
        f"{len(report.fixed)} the live code dead-lettered now apply"
    )
    for regression in report.regressions:
        console.print(
            plain(
                f"REGRESSION {regression.handler} {regression.message_id} {regression.type}: "
                f"live applied, shadow {regression.shadow} ({regression.reason})"
            )
        )
    console.print(
        f"{len(report.regressions)} regression(s)" if report.regressions else "no regression"
    )
