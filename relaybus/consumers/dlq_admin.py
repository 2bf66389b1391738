"""Operator access to dead letters, one interface over Kafka topics and RabbitMQ queues."""

from __future__ import annotations

import asyncio
import base64
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from aio_pika.exceptions import AMQPError
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.errors import KafkaError

from relaybus import headers as h
from relaybus.brokers.kafka_admin import committed_reader, read_to, topic_partitions
from relaybus.brokers.kafka_connection import KafkaTarget, kafka_client_options
from relaybus.brokers.rabbit_management import management_get
from relaybus.consumers.incoming import header_text
from relaybus.consumers.naming import DLQ_SUFFIX, source_of_dlq
from relaybus.consumers.rabbit_worker import wire_pairs
from relaybus.tracing.redrive import redriven_headers

# What a broker outage looks like to callers of this module (the CLI reports it).
BROKER_ERRORS: tuple[type[BaseException], ...] = (KafkaError, AMQPError, OSError)
PAGE = 500  # letters fetched per broker round trip; none is kept beyond its page
# Ids an audit row (and ``--json``) lists per kind; the counts stay complete.
AUDIT_IDS = 1_000


class DeadLetterError(LookupError):
    """The dead-letter queue or topic does not exist, or the broker refused."""


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter: its body (unchanged) and headers, with the ``x-…`` ones named."""

    id: str
    type: str
    key: str
    reason: str
    exception: str
    attempts: str
    consumer: str
    failed_at: str
    original: str
    position: str
    headers: dict[str, str] = field(repr=False)
    body: bytes = field(repr=False)

    @classmethod
    def of(cls, key: str, body: bytes, headers: dict[str, str], position: str) -> DeadLetter:
        return cls(
            id=headers.get("id", ""),
            type=headers.get("type", ""),
            key=key,
            reason=headers.get(h.DLQ_REASON, ""),
            exception=": ".join(
                (headers.get(h.EXCEPTION_TYPE, ""), headers.get(h.EXCEPTION_MESSAGE, ""))
            ),
            attempts=headers.get(h.ATTEMPTS, ""),
            consumer=headers.get(h.CONSUMER, ""),
            failed_at=headers.get(h.FAILED_AT, ""),
            original=headers.get(h.ORIGINAL_TOPIC, ""),
            position=position,
            headers=headers,
            body=body,
        )

    def summary(self) -> dict[str, Any]:
        """JSON-friendly view (body as text when it is UTF-8, else base64)."""
        try:
            body: str = self.body.decode()
            encoding = "utf-8"
        except UnicodeDecodeError:
            body, encoding = base64.b64encode(self.body).decode(), "base64"
        return {
            "id": self.id,
            "type": self.type,
            "key": self.key,
            "reason": self.reason,
            "exception": self.exception,
            "attempts": self.attempts,
            "consumer": self.consumer,
            "failed_at": self.failed_at,
            "original": self.original,
            "position": self.position,
            "headers": self.headers,
            "body": body,
            "body_encoding": encoding,
        }

    def replay_headers(self) -> dict[str, str]:
        """The original message's headers (same ``id``), without relaybus bookkeeping."""
        return {k: v for k, v in self.headers.items() if not h.is_reserved(k)}

    @property
    def ref(self) -> str:
        """What identifies this letter within its DLQ: its Kafka position, else its id."""
        return self.position or self.id


Selector = Callable[[DeadLetter], bool]


@dataclass
class ReplayPlan:
    """Which letters of ``dlq`` go to ``target``, decided before anything is sent.

    ``target`` is the DLQ's own source (``X.dlq`` -> ``X``) unless the operator typed
    another. A letter whose recorded origin (``x-original-topic``) is not the DLQ's
    own source is ``refused``, never sent, whatever the target: headers do not pick
    destinations. Only ``(ref, id)`` pairs are kept, never bodies.
    """

    dlq: str
    target: str
    select: Selector
    accepted: list[tuple[str, str]] = field(default_factory=list)
    refused: list[tuple[str, str, str]] = field(default_factory=list)  # ref, id, origin
    # The audit row recorded before sending: the replayed messages' spans name it.
    audit_id: int | None = None
    _unsent: Counter[str] = field(default_factory=Counter, repr=False)

    def consider(self, letter: DeadLetter) -> None:
        if not self.select(letter):
            return
        if not self._from_source(letter):
            self.refused.append((letter.ref, letter.id, letter.original))
        else:
            self.accepted.append((letter.ref, letter.id))
            self._unsent[letter.ref] += 1

    def take(self, letter: DeadLetter) -> bool:
        """In the send pass: may this letter be sent? Each planned letter once.

        The send pass reads the DLQ again, and what it meets is checked again in
        full (selection and origin), not by its ``ref`` alone: on RabbitMQ the ref
        is the message id, which the letter's writer chose, so a forged letter
        carrying a planned letter's id and another origin must still be refused.
        True consumes one planned occurrence of the ref.
        """
        if not self.select(letter) or not self._from_source(letter):
            return False
        if self._unsent[letter.ref] <= 0:
            return False
        self._unsent[letter.ref] -= 1
        return True

    def _from_source(self, letter: DeadLetter) -> bool:
        return not letter.original or letter.original == source_of_dlq(self.dlq)

    def audit_detail(
        self, broker: str, sent: list[str], reason: str | None, type_: str | None
    ) -> dict[str, Any]:
        """The audit row's (and ``--json``'s) account of a replay: every id, every target."""
        cap = AUDIT_IDS
        detail: dict[str, Any] = {
            "broker": broker,
            "target": self.target,
            "replayed": len(sent),
            "ids": sent[:cap],
            "planned": [{"id": i[:64], "position": ref[:64]} for ref, i in self.accepted[:cap]],
            "refused": [
                {"id": i[:64], "position": ref[:64], "origin": o[:255]}
                for ref, i, o in self.refused[:cap]
            ],
            "planned_count": len(self.accepted),
            "refused_count": len(self.refused),
            "reason": reason,
            "type": type_,
        }
        if max(len(sent), len(self.accepted), len(self.refused)) > cap:
            detail["lists_cut_at"] = cap  # the counts above are complete
        return detail


def replayed_headers(letter: DeadLetter, plan: ReplayPlan) -> dict[str, str]:
    """The headers a replayed letter is sent with: the original's, with a replay span's
    trace context linked to the original's when tracing is on."""
    return redriven_headers(
        letter.replay_headers(),
        action="dlq.replay",
        destination=plan.target,
        audit_id=plan.audit_id,
    )


async def plan_replay(
    store: DeadLetterStore, dlq: str, select: Selector, to: str | None = None
) -> ReplayPlan:
    """Read ``dlq`` page by page and decide what a replay would send where."""
    plan = ReplayPlan(dlq, to or source_of_dlq(dlq), select)
    async for letter in store.letters(dlq):
        plan.consider(letter)
    return plan


@dataclass(frozen=True)
class BrowseLimits:
    """What one look at a DLQ may cost: letters kept, letters read, seconds spent."""

    letters: int = 200
    scanned: int = 5_000
    seconds: float = 10.0


@dataclass
class Browsed:
    """The letters a bounded look found, and why it stopped early (None: it saw the
    whole queue or found ``letters`` matches)."""

    letters: list[DeadLetter]
    cut: str | None = None


async def browse(
    store: DeadLetterStore, name: str, select: Selector, limits: BrowseLimits
) -> Browsed:
    """The first ``limits.letters`` letters of ``name`` that ``select`` accepts,
    reading at most ``limits.scanned`` letters for at most ``limits.seconds``;
    ``cut`` says which bound ended the look early (the page says so)."""
    found = Browsed([])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.seconds
    scanned = 0

    async def look() -> None:
        nonlocal scanned
        async for letter in store.letters(name):
            scanned += 1
            if select(letter):
                found.letters.append(letter)
                if len(found.letters) >= limits.letters:
                    return
            if scanned >= limits.scanned:
                found.cut = f"stopped after reading {scanned} letters"
                return
            if loop.time() >= deadline:
                found.cut = f"stopped after {limits.seconds:g} s ({scanned} letters read)"
                return

    try:
        await asyncio.wait_for(look(), timeout=limits.seconds + 5)
    except TimeoutError:
        found.cut = f"the broker did not answer within {limits.seconds:g} s"
    return found


async def collect(
    store: DeadLetterStore, name: str, limit: int = 1_000_000, select: Selector | None = None
) -> list[DeadLetter]:
    """The first ``limit`` letters of ``name`` (that ``select`` accepts), read in pages."""
    out: list[DeadLetter] = []
    async for letter in store.letters(name):
        if select is None or select(letter):
            out.append(letter)
            if len(out) >= limit:
                break
    return out


class DeadLetterStore(Protocol):
    """Dead letters of one broker, read in pages (``letters`` never holds a whole DLQ).

    ``replay`` sends the letters a ``ReplayPlan`` accepted to its target, with their
    original headers and id (so an inbox consumer applies each at most once), and
    removes them from the DLQ where the broker allows it (RabbitMQ; a Kafka DLQ is a
    log: use ``purge``). It returns the ids sent.
    """

    async def queues(self) -> list[tuple[str, int]]: ...

    def letters(self, name: str) -> AsyncIterator[DeadLetter]: ...

    async def replay(self, plan: ReplayPlan) -> list[str]: ...

    async def purge(self, name: str) -> int: ...


class KafkaDeadLetters:
    """Dead letters in ``<topic>.dlq`` topics."""

    def __init__(self, bootstrap: KafkaTarget) -> None:
        self.bootstrap = bootstrap

    async def queues(self) -> list[tuple[str, int]]:
        admin = AIOKafkaAdminClient(**kafka_client_options(self.bootstrap))
        await admin.start()
        try:
            topics = sorted(t for t in await admin.list_topics() if t.endswith(DLQ_SUFFIX))
        finally:
            await admin.close()
        return [
            (t, sum(end - start for start, end in (await self._bounds(t)).values())) for t in topics
        ]

    async def _consumer(self) -> AIOKafkaConsumer:
        consumer = committed_reader(self.bootstrap)
        await consumer.start()
        # Let the consumer's internal tasks begin: aiokafka's stop() raises
        # CancelledError for a group-less consumer stopped before they first ran.
        await asyncio.sleep(0)
        return consumer

    async def _bounds(self, topic: str) -> dict[TopicPartition, tuple[int, int]]:
        consumer = await self._consumer()
        try:
            try:
                parts = await topic_partitions(self.bootstrap, topic, timeout=0)
            except LookupError:
                raise DeadLetterError(f"no Kafka topic {topic!r}") from None
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            starts = await consumer.beginning_offsets(tps)
            ends = await consumer.end_offsets(tps)
            return {tp: (starts[tp], ends[tp]) for tp in tps}
        finally:
            await consumer.stop()

    async def letters(self, name: str) -> AsyncIterator[DeadLetter]:
        bounds = await self._bounds(name)
        consumer = await self._consumer()
        try:
            live = {tp for tp, (start, end) in bounds.items() if end > start}
            consumer.assign(list(bounds))
            for tp, (start, _) in bounds.items():
                consumer.seek(tp, start)  # explicit offsets: seek_to_beginning is lazy
            ends = {tp: end for tp, (_, end) in bounds.items()}
            while live:
                batches = await consumer.getmany(*live, timeout_ms=1000, max_records=PAGE)
                for tp, records in batches.items():
                    for r in records:
                        if r.offset >= ends[tp]:
                            live.discard(tp)
                            break
                        headers = {k: header_text(v) for k, v in r.headers}
                        key = r.key.decode("utf-8", errors="replace") if r.key else ""
                        pos = f"{r.partition}:{r.offset}"
                        yield DeadLetter.of(key, r.value or b"", headers, pos)
                # By position: a purge running meanwhile moves the start past the
                # records asked for (the reset lands at the end), and the scan ends.
                await read_to(consumer, live, ends)
        finally:
            await consumer.stop()

    async def replay(self, plan: ReplayPlan) -> list[str]:
        if not plan.accepted:
            return []
        producer = AIOKafkaProducer(
            **kafka_client_options(self.bootstrap), acks="all", enable_idempotence=True
        )
        await producer.start()
        sent: list[str] = []
        try:
            async for d in self.letters(plan.dlq):
                if not plan.take(d):
                    continue
                await producer.send_and_wait(
                    plan.target,
                    value=d.body,
                    key=d.key.encode() if d.key else None,
                    headers=[(k, v.encode()) for k, v in replayed_headers(d, plan).items()],
                )
                sent.append(d.id)
        finally:
            await producer.stop()
        return sent

    async def purge(self, name: str) -> int:
        bounds = await self._bounds(name)
        admin = AIOKafkaAdminClient(**kafka_client_options(self.bootstrap))
        await admin.start()
        try:
            await admin.delete_records(
                {tp: RecordsToDelete(end) for tp, (_, end) in bounds.items()}
            )
        finally:
            await admin.close()
        return sum(end - start for start, end in bounds.values())


def amqp_vhost(url: str) -> str:
    """The vhost an AMQP URL names ("/" when its path is empty, as aio-pika reads it)."""
    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


class RabbitDeadLetters:
    """Dead letters in ``<queue>.dlq`` queues (listed through the management API)."""

    def __init__(self, url: str, management_url: str) -> None:
        self.url = url
        self.management_url = management_url

    async def queues(self) -> list[tuple[str, int]]:
        """DLQs of the AMQP URL's vhost (the one ``letters`` and ``purge`` open)."""
        rows = await asyncio.to_thread(self._management, "/api/queues")
        vhost = amqp_vhost(self.url)
        return sorted(
            (q["name"], int(q.get("messages", 0) or 0))
            for q in rows
            if str(q["name"]).endswith(DLQ_SUFFIX) and q.get("vhost", "/") == vhost
        )

    def _management(self, path: str) -> Any:
        return management_get(self.management_url, path)

    async def letters(self, name: str) -> AsyncIterator[DeadLetter]:
        """Every letter, by ``basic.get`` without ack; all go back to the queue when the
        connection closes (RabbitMQ holds the unacked ones, not this process)."""
        connection = await aio_pika.connect(self.url)
        try:
            channel = await connection.channel()
            queue = await self._queue(channel, name)
            while (message := await queue.get(no_ack=False, fail=False)) is not None:
                yield self._letter(message)
        finally:
            await connection.close()

    async def replay(self, plan: ReplayPlan) -> list[str]:
        """Take each accepted letter off the DLQ: publish it to the target with
        confirms (unroutable is an error), then ack it; the rest go back."""
        if not plan.accepted:
            return []
        connection = await aio_pika.connect(self.url)
        sent: list[str] = []
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            queue = await self._queue(channel, plan.dlq)
            while len(sent) < len(plan.accepted):
                message = await queue.get(no_ack=False, fail=False)
                if message is None:
                    break
                letter = self._letter(message)
                if not plan.take(letter):
                    continue
                headers = replayed_headers(letter, plan)
                if not letter.id:
                    headers[h.NO_ID] = "1"  # the client invents a message_id; not an id
                await channel.default_exchange.publish(
                    aio_pika.Message(
                        body=letter.body,
                        headers=dict[str, Any](headers),
                        message_id=message.message_id,
                        type=letter.type or None,
                        content_type=message.content_type,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=plan.target,
                    mandatory=True,
                )
                await message.ack()  # only after the broker confirmed the copy
                sent.append(letter.id)
        finally:
            await connection.close()  # unacked deliveries go back to the queue
        return sent

    @staticmethod
    async def _queue(channel: AbstractChannel, name: str) -> AbstractQueue:
        try:
            return await channel.get_queue(name, ensure=True)
        except aio_pika.exceptions.ChannelClosed:
            raise DeadLetterError(f"no RabbitMQ queue {name!r}") from None

    @staticmethod
    def _letter(message: AbstractIncomingMessage) -> DeadLetter:
        headers = {k: header_text(v) for k, v in wire_pairs(message)}
        return DeadLetter.of(message.routing_key or "", message.body, headers, "")

    async def purge(self, name: str) -> int:
        connection = await aio_pika.connect(self.url)
        try:
            channel = await connection.channel()
            try:
                queue = await channel.get_queue(name, ensure=True)
            except aio_pika.exceptions.ChannelClosed:
                raise DeadLetterError(f"no RabbitMQ queue {name!r}") from None
            result = await queue.purge()
            return int(result.message_count or 0)
        finally:
            await connection.close()
