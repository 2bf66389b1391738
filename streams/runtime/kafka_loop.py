"""Runs a ``StreamProcessor`` on Kafka: batches, at-least-once, dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any, TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from consumers.failure import Copy, FailurePath, salvage_headers
from consumers.incoming import Incoming, InvalidMessage, WireLimits, decode, read_headers
from consumers.naming import dlq_name
from consumers.unreadable import skip_unreadable
from relaybus.backoff import Backoff
from relaybus.brokers.kafka_admin import ensure_topic, topic_partitions
from streams.runtime.processor import Emit, StreamProcessor

log = logging.getLogger(__name__)
Record: TypeAlias = ConsumerRecord[Any, Any]


class KafkaStreamRunner:
    """Consumes ``processor.inputs`` in group ``processor.name`` and sends what
    ``process`` returns.

    - **Delivery**: at-least-once. A batch's outputs (and dead letters) are sent and
      acknowledged (acks=all, idempotent producer) before its offsets are committed;
      a crash or rebalance redelivers the uncommitted tail, and the processor answers
      it the same way again (same ids, which downstream inboxes drop).
    - **Order**: one batch at a time; outputs are sent in input order on one producer,
      so per-partition order of a key holds end to end.
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
        bootstrap: str,
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
        self._positions: dict[TopicPartition, int] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Process until ``stop`` is set; then commit what was sent and leave the group."""
        copy_limit = next(iter(self.failures.values())).copy_budget + 16 * 1024
        for topic in self.processor.inputs:
            await ensure_topic(self.bootstrap, topic)
            partitions = len(await topic_partitions(self.bootstrap, topic))
            await ensure_topic(
                self.bootstrap,
                dlq_name(topic),
                partitions=partitions,
                config={"max.message.bytes": str(copy_limit)},
            )
        for topic in self.processor.output_topics():
            await ensure_topic(self.bootstrap, topic)
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=self.linger_ms,
            max_request_size=copy_limit,
        )
        consumer = AIOKafkaConsumer(
            *self.processor.inputs,
            bootstrap_servers=self.bootstrap,
            group_id=self.processor.name,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_records=self.batch_size,
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=max(100, self.session_timeout_ms // 5),
        )
        await producer.start()
        await consumer.start()
        backoff = Backoff(initial=0.2, maximum=10.0)
        try:
            while not stop.is_set():
                try:
                    batches = await consumer.getmany(timeout_ms=300, max_records=self.batch_size)
                except KafkaError:
                    raise
                except Exception as err:  # the client could not parse a record
                    skipped = await skip_unreadable(
                        consumer, err, self._positions, self._unreadable_sender(producer)
                    )
                    await self._commit(consumer, skipped)
                    continue
                if consumer.assignment():
                    self.ready.set()
                if not batches:
                    continue
                try:
                    await self._handle(producer, batches)
                except Exception as err:
                    delay = backoff.next_delay()
                    log.warning(
                        "%s: batch failed (%r); offering it again in %.1fs",
                        self.processor.name,
                        err,
                        delay,
                        exc_info=not isinstance(err, KafkaError | OSError | ConnectionError),
                    )
                    self.stats["batch-retries"] += 1
                    for tp, records in batches.items():
                        self._positions[tp] = records[0].offset
                        with contextlib.suppress(IllegalStateError):  # revoked meanwhile
                            consumer.seek(tp, records[0].offset)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                    continue
                backoff.reset()
                offsets = {tp: records[-1].offset + 1 for tp, records in batches.items()}
                self._positions.update(offsets)
                await self._commit(consumer, offsets)
        finally:
            await consumer.stop()
            await producer.stop()

    async def _handle(
        self, producer: AIOKafkaProducer, batches: dict[TopicPartition, list[Record]]
    ) -> None:
        records = [record for group in batches.values() for record in group]
        decoded: list[tuple[Record, Incoming]] = []
        sends: list[tuple[Emit | Copy, bytes | None]] = []
        for record in records:
            message = self._decode(record, sends)
            if message is not None:
                decoded.append((record, message))
        results = await self.processor.process([message for _, message in decoded])
        if len(results) != len(decoded):
            raise RuntimeError(f"{self.processor.name}: {len(results)} results for {len(decoded)}")
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
        await self._send_all(producer, sends)

    def _decode(
        self, record: Record, sends: list[tuple[Emit | Copy, bytes | None]]
    ) -> Incoming | None:
        pairs = record.headers or ()
        raw = record.value or b""
        try:
            headers = read_headers(pairs, self.limits)
        except InvalidMessage as err:
            headers = salvage_headers(pairs, self.limits)
            sends.append((self._invalid(record, headers, err), record.key))
            return None
        key = record.key.decode("utf-8", errors="replace") if record.key else ""
        try:
            return decode(
                raw,
                headers,
                key=key,
                source=record.topic,
                partition=record.partition,
                offset=record.offset,
                accepted_types=self.processor.accepted_types,
                max_bytes=self.limits.max_bytes,
                require_object=True,
            )
        except InvalidMessage as err:
            sends.append((self._invalid(record, headers, err), record.key))
            return None

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

    @staticmethod
    async def _send_all(
        producer: AIOKafkaProducer, sends: Sequence[tuple[Emit | Copy, bytes | None]]
    ) -> None:
        """Send in order and wait for every acknowledgement (one flush, not one
        round trip per record)."""
        acks = []
        for item, key in sends:
            if isinstance(item, Emit):
                acks.append(
                    await producer.send(item.topic, item.value, key=item.key, headers=item.headers)
                )
            else:
                headers = [(k, v.encode("utf-8", "surrogatepass")) for k, v in item.headers.items()]
                acks.append(
                    await producer.send(item.destination, item.body, key=key, headers=headers)
                )
        if acks:
            await asyncio.gather(*acks)

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as err:
            # The group moved on: the new owner redelivers these records, and the
            # processor answers them the same way (same ids): duplicates, dropped
            # downstream.
            log.warning("%s: commit of %s failed: %r", self.processor.name, offsets, err)
