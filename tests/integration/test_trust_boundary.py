"""Hostile records from clients that are not relaybus (kcat; RabbitMQ's management API
and raw AMQP), on the real brokers: each is applied or dead-lettered with its reason,
and a good record sent after it on the same key and partition is applied (the worker
is alive and nothing stalls)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import aio_pika
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus import headers as rh
from relaybus.consumers.dlq_admin import collect
from relaybus.consumers.rabbit_worker import QUORUM
from relaybus.ids import uuid7
from relaybus.settings import Settings
from tests.integration.test_consumers import BROKERS, Case, new_case
from tests.support.cli import run_cli
from tests.support.consumer_apps import TEST_TYPE, make_app
from tests.support.consumerdata import effects, running
from tests.support.foreign import (
    Header,
    Hostile,
    kcat_produce,
    management_publish,
    rabbit_foreign_send,
)
from tests.support.poll import eventually

pytestmark = pytest.mark.usefixtures("effects_table")

MAX_BYTES = 64 * 1024  # the test handler's body cap, so "huge" stays under the brokers'
MARKUP_TYPE = "[/x][link=http://evil]t\x1b[2J"  # a type an operator will see in `dlq show`


def envelope(message_id: str | None = None, type_: str = TEST_TYPE) -> list[Header]:
    """The headers relaybus's relay would write, as raw pairs."""
    pairs = [(b"type", type_.encode())]
    return [(b"id", (message_id or str(uuid7())).encode()), *pairs]


def good(n: int) -> Hostile:
    return Hostile(f"good-{n}", json.dumps({"n": n}).encode(), envelope())


def hostile_records() -> list[Hostile]:
    """Every input class of the trust boundary, with the outcome relaybus must give."""
    markup = json.dumps({"n": 501, "s": "[link=http://evil]x[/link] \x1b[31mred [/x]"})
    forged = [
        (rh.ATTEMPTS.encode(), b"99"),
        (rh.RETRY_AT.encode(), b"99999999999"),
        (rh.ORIGINAL_TOPIC.encode(), b"somewhere.else"),
        (rh.CONSUMER.encode(), b"someone-else"),
        (rh.DLQ_REASON.encode(), b"forged"),
    ]
    return [
        Hostile("deep", b"[" * 60_000, envelope(), "too-deep"),  # under the body cap
        Hostile("huge-int", b'{"n": 1' + b"9" * 5000 + b"}", envelope(), "huge-number"),
        Hostile("huge-float", b'{"n": 1e999}', envelope(), "huge-number"),
        Hostile("nul", b'{"n": 1, "s": "a\\u0000b"}', envelope(), "nul-in-string"),
        Hostile("surrogate", b'{"n": 1, "s": "\\udc00"}', envelope(), "lone-surrogate"),
        Hostile("not-object", b"[1, 2, 3]", envelope(), "not-object"),
        Hostile("not-utf8", b'{"s": "\xff"}', envelope(), "not-utf8"),
        Hostile("truncated", b'{"n": ', envelope(), "not-json"),
        Hostile("huge-body", json.dumps({"s": "x" * 100_000}).encode(), envelope(), "oversize"),
        Hostile("stub-body", json.dumps({"s": "x" * 300_000}).encode(), envelope(), "oversize"),
        Hostile("markup", markup.encode(), [*envelope(), (b"note", b"[/x][link=x]")]),
        Hostile("forged-main", b'{"n": 502}', [*envelope(), *forged]),
        Hostile("forged-attempts", b'{"n": 503, "fail_times": 1}', [*envelope(), *forged[:1]]),
        Hostile("bad-header", b'{"n": 1}', [*envelope(), (b"note", b"\xff\xfe")], "bad-header"),
        Hostile(
            "duplicate-header",
            b'{"n": 1}',
            [*envelope(), (b"note", b"a"), (b"note", b"b")],
            "duplicate-header",
            kafka_only=True,
        ),
        Hostile(
            "many-headers",
            b'{"n": 1}',
            [*envelope(), *((f"h{i}".encode(), b"v") for i in range(70))],
            "too-many-headers",
        ),
        Hostile(
            "large-headers",
            b'{"n": 1}',
            [*envelope(), (b"big", b"v" * 70_000)],
            "headers-too-large",
        ),
        # Debezium-shaped records (consumers/cdc.py): packed headers are untrusted too.
        Hostile(
            "dbz-packed-garbage",
            b'{"n": 1}',
            [*envelope(), (b"relaybus-outbox-headers", b"{not json")],
            "bad-header",
        ),
        Hostile(
            "dbz-packed-forged",
            b'{"n": 504}',
            [
                *envelope(),
                (b"__debezium.context.connectorName", b"postgresql"),
                (b"relaybus-outbox-headers", b'{"x-dlq-reason": "forged", "id": "x", "ok": "1"}'),
                (b"occurred_at", b"-5"),  # not epoch micros: passed on as sent
            ],
        ),
        # An 18-digit epoch past year 9999 made normalize raise OverflowError, which
        # both Kafka loops took for their own failure: the batch was retried forever.
        Hostile(
            "dbz-overflow-time",
            b'{"n": 1}',
            [
                *envelope(),
                (b"__debezium.context.connectorName", b"postgresql"),
                (b"occurred_at", b"9" * 18),
            ],
            "bad-header",
        ),
        Hostile("missing-id", b'{"n": 1}', [(b"type", TEST_TYPE.encode())], "missing-id"),
        Hostile("bad-id", b'{"n": 1}', envelope("not-a-uuid"), "bad-id"),
        Hostile("unknown-type", b'{"n": 1}', envelope(type_="other.type"), "unknown-type"),
        Hostile("markup-type", b'{"n": 1}', envelope(type_=MARKUP_TYPE), "unknown-type"),
        *(
            Hostile(f"{codec}", f'{{"n": {510 + i}}}'.encode(), envelope(), None, codec, True)
            for i, codec in enumerate(("gzip", "snappy", "lz4", "zstd"))
        ),
        Hostile("gzip-bad", b"{nope", envelope(), "not-json", "gzip", kafka_only=True),
        Hostile(
            "bad-header-name",
            b'{"n": 1}',
            [*envelope(), (b"bad\xffname", b"v")],
            "unreadable-record",
            kafka_only=True,
        ),
    ]


def applied_n(record: Hostile) -> int | None:
    """The ``n`` a record applies, if it is one that must be applied."""
    if record.reason is not None:
        return None
    return int(json.loads(record.body)["n"])


async def send_foreign(settings: Settings, case: Case, record: Hostile) -> None:
    if case.broker == "kafka":
        await asyncio.to_thread(
            kcat_produce,
            settings.kafka_bootstrap,
            case.route,
            b"k",
            [record.body],
            record.headers,
            compression=record.compression,
        )
    else:
        await rabbit_foreign_send(
            settings.rabbitmq, settings.rabbitmq_management, case.route, record
        )


@pytest.mark.parametrize("broker", BROKERS)
async def test_hostile_records_are_dead_lettered_with_their_reason_and_nothing_stalls(
    broker: str, settings: Settings, engine: AsyncEngine
) -> None:
    case = new_case(broker, "hostile")
    records = [r for r in hostile_records() if broker == "kafka" or not r.kafka_only]
    app = make_app(
        case.name,
        require_object=True,
        max_bytes=MAX_BYTES,
        **case.app_args(),  # type: ignore[arg-type]
    )
    store = case.dead_letters(settings)
    sent: list[Hostile] = []
    async with running(app, settings) as worker:
        for i, record in enumerate(records):
            follower = good(1000 + i)  # same key, same partition, after the bad one
            for one in (record, follower):
                await send_foreign(settings, case, one)
                sent.append(one)
        expected_n = sorted(n for r in sent if (n := applied_n(r)) is not None)
        expected_reasons = Counter(r.reason for r in sent if r.reason is not None)

        async def settled() -> bool:
            rows = await effects(engine, case.name)
            letters = await collect(store, case.dlq)
            return len(rows) >= len(expected_n) and len(letters) >= sum(expected_reasons.values())

        await eventually(settled, within=120, what="every record applied or dead-lettered")
        stats = dict(worker.runners[0].processor.stats)
    rows = await effects(engine, case.name)
    letters = await collect(store, case.dlq)
    assert sorted(r["n"] for r in rows) == expected_n, stats  # each good one exactly once
    assert Counter(letter.reason for letter in letters) == expected_reasons
    by_name = {r.name: r for r in sent}
    ids = {dict(r.headers).get(b"id", b"").decode(errors="replace"): r for r in sent}
    for letter in letters:
        if by_name["missing-id"].reason == letter.reason:
            assert "id" not in letter.headers  # no identity invented for it
            continue
        if letter.reason == "unreadable-record":
            assert letter.body == b""
            assert rh.BODY_DROPPED in letter.headers
            continue
        assert letter.id in ids, (letter.reason, letter.headers)
        record = ids[letter.id]  # the dead letter kept exactly the id it had
        assert letter.reason == record.reason, record.name
        assert letter.headers[rh.ORIGINAL_TOPIC] == case.source
        if record.name == "stub-body":
            assert letter.body == b""
            assert rh.BODY_DROPPED in letter.headers
        elif record.reason != "headers-too-large":
            assert letter.body == record.body, record.name
    # Forged retry headers on a first delivery steered nothing: applied at once, first
    # attempt; a forged x-attempts did not use up the retry budget.
    attempts = {r["n"]: r["attempt"] for r in rows}
    assert attempts[502] == 1
    assert attempts[503] == 2

    # Operators read these letters: values print as text, never markup or escapes.
    shown = await asyncio.to_thread(
        run_cli, "dlq", "show", case.dlq, "--broker", broker, "--limit", "100"
    )
    assert shown.returncode == 0, shown.stderr
    # Printed literally (the table may fold the cell, so look for its pieces).
    assert "[/x]" in shown.stdout
    assert "[link=" in shown.stdout
    assert "\x1b" not in shown.stdout  # the ESC was shown escaped, not sent


@pytest.mark.parametrize("broker", BROKERS)
async def test_replay_sends_only_where_the_dlq_name_says(
    broker: str, settings: Settings, engine: AsyncEngine
) -> None:
    """A letter written into the DLQ by another client, claiming another origin, is
    refused and listed; the honest one goes back to the DLQ's own source. A forged
    twin carrying the honest letter's id (on RabbitMQ the id is what identifies a
    letter) is refused too, in the plan and in the send pass."""
    case = new_case(broker, "replay")
    app = make_app(case.name, **case.app_args())  # type: ignore[arg-type]
    honest, forged = str(uuid7()), str(uuid7())
    elsewhere = f"{case.source}-elsewhere"
    async with running(app, settings):  # declares the source and its DLQ
        letters = ((honest, elsewhere, 3), (honest, case.source, 1), (forged, elsewhere, 2))
        for message_id, origin, n in letters:
            headers = [
                *envelope(message_id),
                (rh.ORIGINAL_TOPIC.encode(), origin.encode()),
                (rh.DLQ_REASON.encode(), b"max-attempts"),
            ]
            body = json.dumps({"n": n}).encode()
            if broker == "kafka":
                await asyncio.to_thread(
                    kcat_produce, settings.kafka_bootstrap, case.dlq, b"k", [body], headers
                )
            else:
                await asyncio.to_thread(
                    management_publish,
                    settings.rabbitmq_management,
                    case.dlq,
                    body,
                    {k.decode(): v.decode() for k, v in headers},
                    {"message_id": message_id},
                    "amq.default",
                )
        store = case.dead_letters(settings)

        async def both_in_dlq() -> bool:
            return len(await collect(store, case.dlq)) == 3

        await eventually(both_in_dlq, within=30, what="letters in the DLQ")
        result = await asyncio.to_thread(
            run_cli, "dlq", "replay", case.dlq, "--broker", broker, "--yes", "--json"
        )
        assert result.returncode == 0, result.stderr
        detail = json.loads(result.stdout)
        assert detail["target"] == case.source
        assert detail["ids"] == [honest]
        refused = [(honest, elsewhere), (forged, elsewhere)]
        assert [(r["id"], r["origin"]) for r in detail["refused"]] == refused

        async def applied() -> bool:
            return [r["n"] for r in await effects(engine, case.name)] == [1]

        await eventually(applied, within=60, what="honest letter applied at its source")
        if broker == "rabbitmq":  # the refused letter stays in the DLQ
            # (A quorum queue puts a returned delivery at the back: order not kept.)
            left = sorted((d.id, d.original) for d in await collect(store, case.dlq))
            assert left == sorted([(honest, elsewhere), (forged, elsewhere)])
    async with engine.connect() as conn:
        audited = await conn.scalar(
            text(
                "SELECT detail FROM audit_log WHERE action = 'dlq.replay' AND target = :t "
                "ORDER BY id DESC LIMIT 1"
            ),
            {"t": case.dlq},
        )
    assert audited["target"] == case.source
    assert audited["ids"] == [honest]
    assert [r["id"] for r in audited["refused"]] == [honest, forged]


async def test_rabbitmq_unroutable_copy_is_an_error_not_a_silent_ack(
    settings: Settings, engine: AsyncEngine
) -> None:
    """With its DLQ deleted, a worker cannot place a dead letter: the delivery stays
    in the work queue (not acked, not lost) until the DLQ exists again."""
    case = new_case("rabbitmq", "unroutable")
    app = make_app(case.name, **case.app_args())  # type: ignore[arg-type]
    bad = Hostile("truncated", b'{"n": ', envelope(), "not-json")
    connection = await aio_pika.connect(settings.rabbitmq)
    try:
        channel = await connection.channel()
        async with running(app, settings) as worker:
            await channel.queue_delete(case.dlq)
            await send_foreign(settings, case, bad)
            stats = worker.runners[0].processor.stats

            async def refused() -> bool:
                return stats["invalid"] >= 2  # tried, returned to the queue, tried again

            await eventually(refused, within=60, what="copy refused and retried")
            await channel.declare_queue(case.dlq, durable=True, arguments=QUORUM)
            store = case.dead_letters(settings)

            async def placed() -> bool:
                return [d.reason for d in await collect(store, case.dlq)] == ["not-json"]

            await eventually(placed, within=60, what="dead letter placed once the DLQ exists")
    finally:
        await connection.close()
