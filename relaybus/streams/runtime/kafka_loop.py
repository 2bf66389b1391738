"""Runs a ``StreamProcessor`` on Kafka: batches, at-least-once, dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from relaybus.backoff import Backoff
from relaybus.brokers.kafka import key_partition
from relaybus.brokers.kafka_admin import ensure_topic
from relaybus.brokers.kafka_connection import KafkaTarget
from relaybus.consumers.failure import Copy, FailurePath
from relaybus.consumers.incoming import Incoming, InvalidMessage, WireLimits
from relaybus.consumers.kafka_subscription import (
    REQUEST_OVERHEAD,
    Batches,
    KafkaSubscription,
    Record,
    Refused,
    Unreadable,
    copy_producer,
    decode_record,
    prepare_copy_topics,
    record_headers,
)
from relaybus.consumers.naming import dlq_name
from relaybus.streams.runtime.processor import Emit, Result, StreamProcessor
from relaybus.tracing import Tracer, tracer
from relaybus.tracing.w3c import TRACEPARENT

log = logging.getLogger(__name__)


@contextlib.contextmanager
def fewer_collections(threshold: int = 50_000) -> Iterator[None]:
    """Run the block with the cyclic garbage collector mostly out of the way: the
    objects that exist now are frozen (never scanned again) and a young collection
    waits for ``threshold`` allocations instead of 700; restored afterwards.

    Why: each batch allocates about ten short-lived containers per record, all freed
    by reference counting, none in a cycle. With the default threshold the collector
    ran every ~70 records and scanned the surviving objects each time: a third of
    admission's processing time (measured in isolation: 50 → 27 to 35 µs per
    record). Process-wide: one runner per process, as ``relaybus stream NAME`` runs it.
    """
    before = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(threshold, before[1], before[2])
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def trace_decision(
    traced: Tracer, processor: str, message: Incoming, result: Result, began_ns: int
) -> Result:
    """Record one input's decision as a span (a child of the context the input carries,
    linked to it; ``relaybus.decision`` names the output topics or the dead-letter
    reason) with a ``send`` child per output, whose ``traceparent`` the output carries
    instead of any it had. Returns the outputs to send."""
    with traced.span(
        f"process {message.source}",
        kind="consumer",
        parent=message.headers,
        links=[(message.headers, {})],
        attributes={
            "messaging.operation.type": "process",
            "messaging.destination.name": message.source[:255],
            "messaging.message.id": str(message.id),
            "relaybus.processor": processor,
            "relaybus.type": message.type[:255],
        },
    ) as span:
        span.event("relaybus.batch-began", {"ns": began_ns})
        if isinstance(result, InvalidMessage):
            span.set("relaybus.decision", f"dead-letter:{result.reason}")
            span.fail(str(result))
            return result
        span.set("relaybus.decision", ",".join(emit.topic for emit in result) or "nothing")
        traced_emits: list[Emit] = []
        for emit in result:
            with traced.span(
                f"send {emit.topic}",
                kind="producer",
                attributes={
                    "messaging.operation.type": "send",
                    "messaging.system": "kafka",
                    "messaging.destination.name": emit.topic,
                },
            ) as sent:
                headers = [(k, v) for k, v in emit.headers if k != TRACEPARENT]
                if sent.traceparent is not None:
                    headers.append((TRACEPARENT, sent.traceparent.encode()))
                traced_emits.append(dataclasses.replace(emit, headers=headers))
        return traced_emits


@dataclass
class _InFlight:
    """A batch handed to the producer: its acknowledgements and its records."""

    acks: list[asyncio.Future[Any]]
    batches: Batches


class KafkaStreamRunner:
    """Consumes ``processor.inputs`` in group ``processor.name`` and sends what
    ``process`` returns.

    - **Delivery**: at-least-once. A batch's outputs (and dead letters) are sent and
      acknowledged (acks=all, idempotent producer) before its offsets are committed;
      a crash or rebalance redelivers the uncommitted tail, and the processor answers
      it the same way again (same ids, which downstream inboxes drop).
    - **Order**: outputs are sent in input order on one producer, so per-partition
      order of a key holds end to end. The next batch is decoded and processed while
      the previous one's acknowledgements are awaited, but its records are handed to
      the producer only after them: a failed send rewinds both batches, and nothing
      after it is sent first.
    - **Untrusted input**: each record is bounded and decoded (``decode``); one that
      fails, or that ``process`` refuses, goes to ``<topic>.dlq`` with its reason; a
      record the client cannot even parse gets a stub dead letter and is skipped.
      One record never stops the loop.
    - **Failure of a dependency** (``process`` raises, e.g. Redis is down; or a send
      fails): the batch is offered again after a capped backoff; nothing is lost.
    """

    def __init__(
        self,
        processor: StreamProcessor,
        bootstrap: KafkaTarget,
        *,
        limits: WireLimits | None = None,
        batch_size: int = 1000,
        session_timeout_ms: int = 10_000,
        linger_ms: int = 5,
    ) -> None:
        self.processor = processor
        self.bootstrap = bootstrap
        self.limits = limits or WireLimits()
        self.batch_size = batch_size
        self.session_timeout_ms = session_timeout_ms
        self.linger_ms = linger_ms
        self.failures = {
            topic: FailurePath(processor.name, topic, 0, self.limits) for topic in processor.inputs
        }
        self.stats: Counter[str] = Counter()
        self.ready = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Process until ``stop`` is set; then commit what was sent and leave the group."""
        copy_limit = next(iter(self.failures.values())).copy_budget + REQUEST_OVERHEAD
        for topic in self.processor.inputs:
            await prepare_copy_topics(self.bootstrap, topic, [dlq_name(topic)], copy_limit)
        for topic in self.processor.output_topics():
            await ensure_topic(self.bootstrap, topic)
        producer = copy_producer(
            self.bootstrap,
            copy_limit,
            linger_ms=self.linger_ms,
            # Batches are built per partition in ``_issue``: big enough that a
            # poll's worth of records for one partition is one or two batches.
            max_batch_size=min(copy_limit, 256 * 1024),
        )
        subscription = KafkaSubscription(
            self.bootstrap,
            self.processor.inputs,
            group=self.processor.name,
            max_records=self.batch_size,
            session_timeout_ms=self.session_timeout_ms,
            name=self.processor.name,
        )
        with fewer_collections():
            await self._loop(producer, subscription, stop)

    async def _loop(
        self, producer: AIOKafkaProducer, consumer: KafkaSubscription, stop: asyncio.Event
    ) -> None:
        await producer.start()
        await consumer.start()
        backoff = Backoff(initial=0.2, maximum=10.0)
        # The batch whose records are sent but not yet acknowledged. Its acks are
        # awaited only after the next batch is decoded and processed, so waiting for
        # the broker overlaps the processor's work (and its Redis round trip); the
        # next batch's records are sent only after those acks, so a failed send is
        # offered again before anything after it reaches the output.
        in_flight: _InFlight | None = None
        try:
            while not stop.is_set():
                try:
                    batches = await consumer.fetch(timeout_ms=300)
                except Unreadable as err:
                    # Skipping commits past the bad record: settle what is in flight first.
                    settled = await self._settle(consumer, in_flight, {}, backoff, stop)
                    in_flight = None
                    if settled:
                        skipped = await consumer.skip(err, self._unreadable_sender(producer))
                        await consumer.commit(skipped)
                    continue
                if consumer.assigned():
                    self.ready.set()
                if not batches:
                    await self._settle(consumer, in_flight, {}, backoff, stop)
                    in_flight = None
                    continue
                try:
                    sends = await self._prepare(batches)
                except Exception as err:
                    if await self._settle(consumer, in_flight, batches, backoff, stop):
                        await self._offer_again(consumer, err, backoff, stop, batches)
                    in_flight = None
                    continue
                settled = await self._settle(consumer, in_flight, batches, backoff, stop)
                in_flight = None
                if not settled:
                    continue  # both batches are offered again
                try:
                    acks = await self._issue(producer, sends)
                except Exception as err:
                    await self._offer_again(consumer, err, backoff, stop, batches)
                    continue
                in_flight = _InFlight(acks, batches)
        finally:
            if in_flight is not None and not stop.is_set():
                # Leaving on an error: the group redelivers whatever is uncommitted.
                log.warning("%s: leaving with a batch unacknowledged", self.processor.name)
            elif in_flight is not None:
                await self._settle(consumer, in_flight, {}, backoff, stop)
            await consumer.stop()
            await producer.stop()

    async def _settle(
        self,
        consumer: KafkaSubscription,
        in_flight: _InFlight | None,
        after: Batches,
        backoff: Backoff,
        stop: asyncio.Event,
    ) -> bool:
        """Wait for ``in_flight``'s acknowledgements and commit its offsets. If a send
        failed, rewind to its first records (and before ``after``, the batch polled
        since, not yet sent) and return False: both are offered again."""
        if in_flight is None:
            return True
        outcomes = await asyncio.gather(*in_flight.acks, return_exceptions=True)
        failed = next((o for o in outcomes if isinstance(o, BaseException)), None)
        if failed is not None:
            await self._offer_again(consumer, failed, backoff, stop, in_flight.batches, after)
            return False
        backoff.reset()
        await consumer.commit(
            {tp: records[-1].offset + 1 for tp, records in in_flight.batches.items()}
        )
        return True

    async def _offer_again(
        self,
        consumer: KafkaSubscription,
        err: BaseException,
        backoff: Backoff,
        stop: asyncio.Event,
        *polled: Batches,
    ) -> None:
        """Seek each partition back to the first record of ``polled`` (earliest
        first) and wait a capped backoff: nothing is lost, nothing skipped."""
        delay = backoff.next_delay()
        log.warning(
            "%s: batch failed (%r); offering it again in %.1fs",
            self.processor.name,
            err,
            delay,
            exc_info=(
                (type(err), err, err.__traceback__)
                if not isinstance(err, KafkaError | OSError | ConnectionError)
                else None
            ),
        )
        self.stats["batch-retries"] += 1
        consumer.rewind(*polled)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)

    async def _prepare(self, batches: Batches) -> list[tuple[Emit | Copy, bytes | None]]:
        """Decode and process one poll's records: what to send, in order (outputs
        and dead letters); nothing is sent yet."""
        records = [record for group in batches.values() for record in group]
        decoded: list[tuple[Record, Incoming]] = []
        sends: list[tuple[Emit | Copy, bytes | None]] = []
        for record in records:
            message = self._decode(record, sends)
            if message is not None:
                decoded.append((record, message))
        began = time.time_ns()
        results = await self.processor.process([message for _, message in decoded])
        if len(results) != len(decoded):
            raise RuntimeError(f"{self.processor.name}: {len(results)} results for {len(decoded)}")
        traced = tracer()
        if traced.enabled:
            results = [
                trace_decision(traced, self.processor.name, message, result, began)
                for (_, message), result in zip(decoded, results, strict=True)
            ]
        for (record, message), result in zip(decoded, results, strict=True):
            if isinstance(result, InvalidMessage):
                self.stats["dead-letters"] += 1
                log.warning(
                    "%s: refused %s/%d/%d: %s",
                    self.processor.name,
                    record.topic,
                    record.partition,
                    record.offset,
                    result,
                )
                sends.append(
                    (self.failures[record.topic].dead(message, result.reason, result), record.key)
                )
            else:
                sends.extend((emit, emit.key) for emit in result)
                self.stats["processed"] += 1
        return sends

    def _decode(
        self, record: Record, sends: list[tuple[Emit | Copy, bytes | None]]
    ) -> Incoming | None:
        headers = record_headers(record, self.limits)
        if isinstance(headers, Refused):
            sends.append((self._invalid(record, headers.headers, headers.error), record.key))
            return None
        message = decode_record(
            record,
            headers,
            self.limits,
            source=record.topic,
            partition=record.partition,
            offset=record.offset,
            accepted_types=self.processor.accepted_types,
            require_object=True,
        )
        if isinstance(message, Refused):
            sends.append((self._invalid(record, headers, message.error), record.key))
            return None
        return message

    def _invalid(self, record: Record, headers: dict[str, str], err: InvalidMessage) -> Copy:
        self.stats["dead-letters"] += 1
        log.warning(
            "%s: invalid record at %s/%d/%d: %s",
            self.processor.name,
            record.topic,
            record.partition,
            record.offset,
            err,
        )
        return self.failures[record.topic].invalid(
            record.value or b"",
            headers,
            err,
            attempt=1,
            partition=record.partition,
            offset=record.offset,
        )

    def _unreadable_sender(self, producer: AIOKafkaProducer) -> Any:
        async def send(tp: TopicPartition, position: int, bad: Exception) -> None:
            self.stats["dead-letters"] += 1
            copy = self.failures[tp.topic].unreadable(tp.partition, position, bad)
            await self._send_all(producer, [(copy, None)])

        return send

    async def _send_all(
        self, producer: AIOKafkaProducer, sends: Sequence[tuple[Emit | Copy, bytes | None]]
    ) -> None:
        """Send every record and wait for every acknowledgement."""
        acks = await self._issue(producer, sends)
        if acks:
            await asyncio.gather(*acks)

    async def _issue(
        self, producer: AIOKafkaProducer, sends: Sequence[tuple[Emit | Copy, bytes | None]]
    ) -> list[asyncio.Future[Any]]:
        """Hand every record to the producer, in order; the acknowledgements' futures.

        Records are grouped per topic partition, in their order, into batches built
        here (``create_batch``/``send_batch``): one future per batch instead of one
        ``send`` per record, the runtime's main saving over a plain loop. A keyed
        record goes where the default partitioner would put it (murmur2 of the key,
        as ``key_partition``), so per-key order is the same as with ``send``; an
        unkeyed one (a stub dead letter) goes through ``send``.
        """
        partitions: dict[str, int] = {}
        groups: dict[tuple[str, int], list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]]
        groups = {}
        acks: list[asyncio.Future[Any]] = []
        for item, key in sends:
            if isinstance(item, Emit):
                topic, value, headers = item.topic, item.value, item.headers
            else:
                topic, value = item.destination, item.body
                headers = [(k, v.encode("utf-8", "surrogatepass")) for k, v in item.headers.items()]
            if key is None:
                acks.append(await producer.send(topic, value, headers=headers))
                continue
            count = partitions.get(topic)
            if count is None:
                count = partitions[topic] = len(await producer.partitions_for(topic))
            groups.setdefault((topic, key_partition(key, count)), []).append((key, value, headers))
        for (topic, partition), records in groups.items():
            batch = producer.create_batch()
            for key, value, headers in records:
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    batch.close()
                    acks.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                        raise RuntimeError(f"a record of {len(value)} bytes fits no batch")
            if batch.record_count():
                batch.close()  # ours alone: ``send`` must not append to it
                acks.append(await producer.send_batch(batch, topic, partition=partition))
        return acks
