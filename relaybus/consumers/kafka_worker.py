"""Runs a ``Handler`` on a Kafka topic: manual commits, per-key lanes, retry tiers, DLQ."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import defaultdict
from typing import Any

from aiokafka import TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from relaybus import headers as rh
from relaybus.backoff import Backoff
from relaybus.brokers.kafka_connection import KafkaTarget
from relaybus.consumers.app import Handler, KafkaSource
from relaybus.consumers.failure import Copy, FailurePath, Outcome
from relaybus.consumers.incoming import Incoming, InvalidMessage, retry_due, strict_int
from relaybus.consumers.kafka_subscription import (
    REQUEST_OVERHEAD,
    Batches,
    CopyProducer,
    KafkaTransport,
    Record,
    Refused,
    Transport,
    Unreadable,
    decode_record,
    record_headers,
)
from relaybus.consumers.naming import dlq_name, retry_name
from relaybus.consumers.processor import Processor

log = logging.getLogger(__name__)

# A worker started while Kafka cannot be reached tries again this often (doubling).
START_RETRY_INITIAL = 0.5
START_RETRY_MAX = 10.0


class KafkaWorker:
    """Consumes ``handler.source.topic`` with group ``source.group``.

    - Auto-commit is off. A fetched batch is processed, then its offsets are
      committed: a record's offset is committed only after its handler transaction
      committed (or it was retried/dead-lettered, with the broker's ack), so a crash
      redelivers, never skips. On revoke the batch in hand finishes and is committed.
    - Within a partition, records of one key run in order; different keys run
      concurrently, in at most ``handler.concurrency`` buckets. SQL handlers apply up
      to ``handler.batch_size`` consecutive records of a bucket in one transaction
      (one inbox statement for all); if any of them fails, that transaction rolls
      back and the records are run one by one, each with its own outcome.
    - A failed attempt goes to ``<topic>.retry.<n>`` (consumed by group
      ``<group>.retry.<n>``, waiting until the record is due) unless the source is
      ``ordered``: then it is retried in place after the backoff, holding its key.
      The last failed attempt, or an invalid record, goes to ``<topic>.dlq``.
    - If producing a retry/dead letter fails, the batch is not committed: the
      consumer seeks back and processes it again (the inbox makes that harmless).
    """

    def __init__(
        self,
        handler: Handler,
        processor: Processor,
        bootstrap: KafkaTarget | None,
        session_timeout_ms: int = 10_000,
        transport: Transport | None = None,
    ) -> None:
        assert isinstance(handler.source, KafkaSource)
        if transport is None:
            assert bootstrap is not None, "a Kafka target or a transport"
            transport = KafkaTransport(bootstrap)
        self.transport = transport
        self.session_timeout_ms = session_timeout_ms
        self.handler = handler
        self.source: KafkaSource = handler.source
        self.processor = processor
        self.producer: CopyProducer | None = None
        self.ready = asyncio.Event()
        self.tiers = 0 if self.source.ordered else handler.retry.tiers
        self.failures = FailurePath(handler.name, self.source.topic, self.tiers, handler.limits)

    async def run(self, stop: asyncio.Event) -> None:
        """Prepare the topics and the producer (waiting, with backoff, for a Kafka
        that cannot be reached yet: a worker started during a broker outage waits
        for it instead of exiting), then consume until ``stop``."""
        backoff = Backoff(START_RETRY_INITIAL, START_RETRY_MAX)
        while not stop.is_set():
            try:
                await self._prepare()
                break
            # LookupError: a topic just created has no metadata yet (a broker that
            # has only just come back can take a while to serve it).
            except (KafkaError, OSError, LookupError) as err:
                delay = backoff.next_delay()
                log.warning(
                    "%s: Kafka not reachable at start (%r); trying again in %.1fs",
                    self.handler.name,
                    err,
                    delay,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            return
        assert self.producer is not None
        topic = self.source.topic
        loops = [_Loop(self, topic, self.source.group, 0)]
        loops += [
            _Loop(self, retry_name(topic, n), f"{self.source.group}.retry.{n}", n)
            for n in range(1, self.tiers + 1)
        ]
        try:
            await asyncio.gather(*(loop.run(stop) for loop in loops))
        finally:
            await self.producer.stop()

    async def _prepare(self) -> None:
        """The source topic, its tier and DLQ topics, and a started producer."""
        topic = self.source.topic
        # Copies may be as large as the wire limits let a delivery in, plus relaybus's
        # headers: the tier/DLQ topics and the producer must accept that much.
        copy_limit = self.failures.copy_budget + REQUEST_OVERHEAD
        extras = [dlq_name(topic), *(retry_name(topic, n) for n in range(1, self.tiers + 1))]
        await self.transport.prepare(topic, extras, copy_limit)
        producer = self.transport.producer(copy_limit)
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self.producer = producer

    async def send(self, copy: Copy, key: bytes | None) -> None:
        """Produce a retry or dead-letter copy and wait for the broker's ack (acks=all)."""
        assert self.producer is not None
        ack = await self.producer.send(
            copy.destination,
            copy.body,
            key,
            [(k, v.encode("utf-8", "surrogatepass")) for k, v in copy.headers.items()],
        )
        await ack


class _Loop(ConsumerRebalanceListener):  # type: ignore[misc]
    """One consumer (main topic or one retry tier) and its commit bookkeeping."""

    def __init__(self, worker: KafkaWorker, topic: str, group: str, tier: int) -> None:
        self.worker = worker
        self.topic = topic
        self.tier = tier
        self.subscription = worker.transport.subscription(
            [topic], group=group, max_records=500, session_timeout_ms=worker.session_timeout_ms
        )
        self._inflight: asyncio.Task[dict[TopicPartition, int]] | None = None
        self._done: dict[TopicPartition, int] = {}

    async def _skip_unreadable(self, err: Unreadable) -> None:
        """Get past a record the client cannot parse (``skip_unreadable``); on the main
        topic it gets a stub dead letter, in a retry tier it is only skipped."""
        worker = self.worker

        async def dead_letter(tp: TopicPartition, position: int, bad: Exception) -> None:
            if self.tier == 0:
                await worker.send(worker.failures.unreadable(tp.partition, position, bad), None)
                worker.processor.stats["invalid"] += 1

        self._done.update(await self.subscription.skip(err, dead_letter))

    async def run(self, stop: asyncio.Event) -> None:
        subscription = self.subscription
        await subscription.start(listener=self)
        backoff = Backoff(initial=0.5, maximum=10.0)
        try:
            while not stop.is_set():
                try:
                    batches = await subscription.fetch(timeout_ms=300)
                except Unreadable as err:
                    await self._skip_unreadable(err)
                    continue
                if self.tier == 0 and subscription.assigned():
                    self.worker.ready.set()
                if not batches:
                    continue
                self._inflight = asyncio.create_task(self._process(batches))
                try:
                    finished = await self._finish(self._inflight, stop)
                    if not finished:
                        break  # stopping mid-batch: uncommitted records are redelivered
                    self._done.update(self._inflight.result())
                except Exception as err:
                    # Could not produce a retry/dead letter (or a bug of ours): process
                    # the batch again after a pause. Handler failures never get here
                    # (they are verdicts), and the inbox makes reprocessing harmless.
                    delay = backoff.next_delay()
                    log.warning(
                        "%s: %r; reprocessing batch in %.1fs",
                        self.topic,
                        err,
                        delay,
                        exc_info=not isinstance(err, KafkaError | OSError),
                    )
                    subscription.rewind(batches)
                    await asyncio.sleep(delay)
                    continue
                finally:
                    self._inflight = None
                backoff.reset()
                await self._commit()
        finally:
            try:
                await self._commit()
            except (KafkaError, OSError) as err:
                log.warning("%s: final commit failed (redelivered later): %r", self.topic, err)
            await subscription.stop()

    async def _finish(self, task: asyncio.Task[Any], stop: asyncio.Event) -> bool:
        """Wait for the batch; once ``stop`` is set, give it ``handler.timeout`` more
        seconds (a breaker may hold it indefinitely), then cancel it. True if it ended
        by itself (its exception, if any, is raised)."""
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not task.done():
            await asyncio.wait({task}, timeout=self.worker.handler.timeout)
        if not task.done():
            task.cancel()
            # Cancelled on purpose: its uncommitted records are redelivered.
            await asyncio.gather(task, return_exceptions=True)
            return False
        task.result()
        return True

    # -- rebalance -----------------------------------------------------------------
    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Finish the batch in hand and commit it before the partitions move on."""
        self.subscription.forget(revoked)
        task = self._inflight
        if task is not None:
            try:
                self._done.update(await asyncio.shield(task))
            except Exception as err:
                # The batch failed (the run loop logs and reprocesses it); whoever gets
                # the partitions redelivers its records.
                log.warning("%s: batch in hand failed during revoke: %r", self.topic, err)
        await self._commit()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        return None

    async def _commit(self) -> None:
        # A commit the group refuses (it moved on) is logged by the subscription: the
        # new owner redelivers, and the inbox makes those duplicates, not double effects.
        offsets, self._done = self._done, {}
        await self.subscription.commit(offsets)

    # -- processing ----------------------------------------------------------------
    async def _process(self, batches: Batches) -> dict[TopicPartition, int]:
        """Run every record; returns the offsets to commit.

        Records are spread over ``concurrency`` buckets by (partition, key), so one
        key's records stay in one bucket, in order; buckets run concurrently. In a
        bucket, consecutive records of the main topic share one transaction (up to
        ``batch_size``) for SQL handlers; anything else runs one by one.
        """
        handler = self.worker.handler
        buckets: dict[int, list[Record]] = defaultdict(list)
        for tp, records in batches.items():
            for record in records:
                buckets[hash((tp.partition, record.key)) % handler.concurrency].append(record)
        await asyncio.gather(*(self._bucket(records) for records in buckets.values()))
        return {tp: records[-1].offset + 1 for tp, records in batches.items()}

    async def _bucket(self, records: list[Record]) -> None:
        handler = self.worker.handler
        chunk_size = handler.batch_size if handler.uses_sql and not self.tier else 1
        chunk: list[tuple[Incoming, Record]] = []
        for record in records:
            message = await self._decode(record)
            if message is None:
                continue
            chunk.append((message, record))
            if len(chunk) >= chunk_size:
                await self._run_chunk(chunk)
                chunk = []
        if chunk:
            await self._run_chunk(chunk)

    async def _run_chunk(self, chunk: list[tuple[Incoming, Record]]) -> None:
        processor = self.worker.processor
        if len(chunk) > 1 and await processor.process_together([m for m, _ in chunk]):
            return
        # One by one: a single record, or the shared transaction failed (rolled back,
        # so nothing of it was applied) and each record now gets its own verdict.
        for message, record in chunk:
            await self._one(message, record)

    async def _decode(self, record: Record) -> Incoming | None:
        """The record as a message; None if it is not ours or was dead-lettered.

        Headers are untrusted: on the main topic the reserved ones are dropped
        unread; on tier ``n`` the attempt is ``n + 1`` (the tier says so, not
        ``x-attempts``), the wait is ``x-retry-at`` bounded by the policy's
        ``max_delay``, and ``x-original-partition``/``-offset`` are used only when
        they are plain numbers.
        """
        worker, handler = self.worker, self.worker.handler
        partition: int | None = record.partition
        offset: int | None = record.offset
        headers = record_headers(record, handler.limits)
        if isinstance(headers, Refused):
            if self.tier:
                return None  # not a copy relaybus wrote: never ours to handle
            await self._dead_letter_invalid(record, headers.headers, headers.error)
            return None
        if self.tier:
            if headers.get(rh.CONSUMER) != handler.name:
                return None  # another group's retry (retry topics are shared per topic)
            if (wait := retry_due(headers, now=time.time(), max_wait=handler.retry.max_delay)) > 0:
                await asyncio.sleep(wait)  # the tier's delay: records in a tier are FIFO
            partition = strict_int(headers.get(rh.ORIGINAL_PARTITION), low=0, high=1_000_000)
            offset = strict_int(headers.get(rh.ORIGINAL_OFFSET), low=0, high=2**63 - 1)
        message = decode_record(
            record,
            headers,
            handler.limits,
            source=worker.source.topic,
            partition=partition,
            offset=offset,
            attempt=self.tier + 1,
            accepted_types=handler.types,
            require_object=handler.require_object,
        )
        if isinstance(message, Refused):
            await self._dead_letter_invalid(record, headers, message.error, partition, offset)
            return None
        return message

    async def _dead_letter_invalid(
        self,
        record: Record,
        headers: dict[str, str],
        err: InvalidMessage,
        partition: int | None = None,
        offset: int | None = None,
    ) -> None:
        worker = self.worker
        worker.processor.stats["invalid"] += 1
        log.warning(
            "%s: invalid record at %s/%d/%d: %s",
            worker.handler.name,
            record.topic,
            record.partition,
            record.offset,
            err,
        )
        copy = worker.failures.invalid(
            record.value or b"",
            headers,
            err,
            attempt=self.tier + 1,
            partition=record.partition if partition is None else partition,
            offset=record.offset if offset is None else offset,
        )
        await worker.send(copy, record.key)

    async def _one(self, message: Incoming, record: Record) -> None:
        worker = self.worker
        while True:
            verdict = await worker.processor.process(message)
            if verdict.outcome is Outcome.RETRY and worker.source.ordered:
                await asyncio.sleep(verdict.delay)  # in place: the key's bucket waits
                message = dataclasses.replace(message, attempt=message.attempt + 1)
                continue
            copy = worker.failures.decide(verdict, message)
            if copy is not None:
                await worker.send(copy, record.key)
            return
