"""The outbox relay: leases partitions, publishes their rows in order, settles them."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass

from relaybus.backoff import Backoff
from relaybus.brokers.publisher import Outcome, Publisher, PublishError
from relaybus.locks.base import Lease, LockBackend
from relaybus.outbox.metrics import RelayMetrics
from relaybus.outbox.routed import RoutedPublisher, best_effort
from relaybus.outbox.routing import Router
from relaybus.outbox.store import OutboxStore, PendingRow

log = logging.getLogger(__name__)

MEMBER_PREFIX = "relay-member:"


@dataclass(frozen=True)
class RelayConfig:
    """Tuning of one relay process (see ``relaybus.settings.Settings`` for the defaults)."""

    partitions: int = 16
    batch_size: int = 500
    lease_ttl: float = 10.0
    poll_interval: float = 1.0
    backoff_initial: float = 0.2
    backoff_max: float = 10.0
    concurrent_batches: int = 4
    instance: str = "relay"
    archive_retention_days: float = 7.0
    purge_interval: float = 60.0
    # The backlog metrics count every row of the outbox (O(backlog): ~70 ms at 100 k
    # pending rows under load); every lease tick, that was a quarter of the polling
    # relay's database time.
    backlog_interval: float = 15.0
    # Payload bytes one process holds at most (split among its concurrent batches).
    max_inflight_bytes: int = 64 * 1024 * 1024
    # Ask writers to NOTIFY while idle (False: polling only, every poll_interval).
    listen: bool = True
    # A key whose message came back deferred (its destination stalls) is left out of
    # the partition's fetches this long, then tried again; meanwhile the other keys
    # fill the batches. Short: it bounds how late publishing resumes after the
    # destination recovers, and a retry of a still-stalled key costs no waiting.
    stall_recheck: float = 0.5

    @property
    def batch_bytes(self) -> int:
        return max(1, self.max_inflight_bytes // self.concurrent_batches)


class PartitionDrainer:
    """Drains one leased partition: fetch in sequence order, publish, settle, repeat.

    Runs until asked to stop (``stopping``: after the current batch is settled),
    until cancelled, or until its lease is found lost (a settle that the fence
    rejects), then returns. Transient broker errors back off (exponential, jittered)
    and retry the same rows; permanent errors, and rows that cannot become messages,
    mark the row failed, and the fetch query then holds back later rows of that key
    while other keys flow. Deferred rows (a destination that stalls: a Kafka
    partition without a live leader) stay pending, and their keys are left out of
    the fetches for ``stall_recheck`` seconds, so one stalled destination holds back
    only its own keys. Any other error (the database, a bug) is logged with the
    partition and the batch's first row, backed off, and the loop goes on: a
    drainer never dies of one batch.
    """

    def __init__(
        self,
        relay: Relay,
        partition: int,
        lease: Lease,
    ) -> None:
        self.relay = relay
        self.partition = partition
        self.lease = lease
        self.wake = asyncio.Event()
        self.idle = False
        self.lost = False
        self.first_row: object = None  # the id of the batch's first row, for logs
        # Keys with a deferred row -> when to fetch them again (loop time).
        self.held: dict[str, float] = {}
        # Set when the coordinator hands the partition back: finish the batch in hand
        # (publish *and* settle), then stop, so the next owner republishes nothing.
        self.stopping = False

    async def run(self) -> None:
        relay = self.relay
        backoff = Backoff(relay.config.backoff_initial, relay.config.backoff_max)
        while not self.lost and not self.stopping:
            # Batches of all partitions share a few slots: on one event loop, a handful
            # of concurrent batches keeps the producer's batches full, while one per
            # partition (16+) mostly adds scheduling and smaller requests.
            # Cleared before the fetch, never after it: a NOTIFY that lands while the
            # fetch runs (its row committed too late for the fetch's snapshot) must
            # still wake us, instead of waiting out the poll interval.
            self.wake.clear()
            try:
                async with relay.batch_slots:
                    result = await self._drain_batch(backoff)
            except Exception:
                result = backoff.next_delay()
                relay.metrics.failures.labels("error").inc()
                log.exception(
                    "partition %d: drain failed (first row %s); retrying in %.1fs",
                    self.partition,
                    self.first_row,
                    result,
                )
            if result == "idle":
                if await relay.want_notify():
                    continue  # rows committed before writers saw us waiting: look again
                self.idle = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), relay.config.poll_interval)
                self.idle = False
            elif isinstance(result, float):
                await asyncio.sleep(result)  # broker trouble: back off outside the slot

    async def _drain_batch(self, backoff: Backoff) -> str | float:
        """One fetch → publish → settle; 'idle', 'done', 'lost', or a delay to back off."""
        relay = self.relay
        fetched = await relay.store.fetch(
            self.partition, relay.config.batch_size, relay.config.batch_bytes, self._held_keys()
        )
        rows = fetched.rows
        self.first_row = rows[0].message.id if rows else None
        if fetched.bad:
            # Rows written around Outbox (psql, another language) that can never be
            # published: fail them now; the next fetch holds back their keys.
            for bad in fetched.bad:
                log.error("partition %d: row %s: %s", self.partition, bad.id, bad.error)
            failed_now = [(b.id, b.error) for b in fetched.bad]
            if await relay.store.settle(self.lease, [], failed_now) is None:
                self.lost = True
                return "lost"
            relay.metrics.failures.labels("permanent").inc(len(failed_now))
            return "done"
        if not rows:
            return "idle"
        if self.lease.remaining() <= 0:
            self.lost = True  # the coordinator failed to extend in time
            return "lost"
        try:
            outcomes = await relay.publish(rows)
        except PublishError as err:
            delay = backoff.next_delay()
            relay.metrics.failures.labels("transient").inc()
            log.warning("partition %d: %s; retrying in %.1fs", self.partition, err, delay)
            try:
                ids = [r.message.id for r in rows]
                await relay.store.note_transient(self.lease, ids, str(err), delay)
            except Exception as note_err:
                # Only bookkeeping for operators: the rows are retried either way.
                log.warning(
                    "partition %d: could not note the failure: %r", self.partition, note_err
                )
            return delay
        backoff.reset()
        published = [r.message.id for r, o in zip(rows, outcomes, strict=True) if o.ok]
        failed = [(r.message.id, o.error) for r, o in zip(rows, outcomes, strict=True) if o.error]
        if await relay.store.settle(self.lease, published, failed) is None:
            log.warning("partition %d: lease lost; stopping", self.partition)
            self.lost = True
            return "lost"
        relay.count(rows, outcomes)
        self._hold([r for r, o in zip(rows, outcomes, strict=True) if o.deferred])
        return "done"

    def _held_keys(self) -> list[str]:
        """Keys still held back (dropping those whose time to try again has come)."""
        if not self.held:
            return []
        now = asyncio.get_running_loop().time()
        self.held = {k: until for k, until in self.held.items() if until > now}
        return list(self.held)

    def _hold(self, deferred: list[PendingRow]) -> None:
        if deferred:
            until = asyncio.get_running_loop().time() + self.relay.config.stall_recheck
            for row in deferred:
                self.held[row.message.aggregateid] = until


class Relay:
    """Publishes committed outbox rows to the configured brokers.

    - Partition ``p`` of ``P`` is drained only by the relay holding the lock
      ``outbox-partition-<p>``; settling is fenced by that lock's token, so a relay
      that lost its lease cannot archive or fail rows another relay now owns.
    - Live relays register ``relay-member:<instance>`` locks; each takes at most
      ``ceil(P / members)`` partitions and gives back extras, so load evens out as
      relays come and go.
    - Delivery is at least once: a crash between publish and settle republishes.
    """

    def __init__(
        self,
        store: OutboxStore,
        locks: LockBackend,
        publishers: Mapping[str, Publisher],
        router: Router,
        config: RelayConfig,
        metrics: RelayMetrics,
    ) -> None:
        self.locks = locks
        self.sender = RoutedPublisher(publishers, router, metrics)
        self.config = config
        self.metrics = metrics
        self.store = store
        self._drainers: dict[int, tuple[PartitionDrainer, asyncio.Task[None]]] = {}
        self._member: Lease | None = None
        self.batch_slots = asyncio.Semaphore(config.concurrent_batches)
        self._next_purge = 0.0
        self._next_backlog = 0.0
        self._reported_stalls = False
        # Whether our outbox_waiters row is (believed) live; changed under the lock so
        # a drainer registering and the tick unregistering cannot interleave.
        self._notified = False
        self._notify_lock = asyncio.Lock()

    # -- publishing -------------------------------------------------------------------
    async def publish(self, rows: list[PendingRow]) -> list[Outcome]:
        """``RoutedPublisher.publish`` of the rows' messages."""
        return await self.sender.publish([r.message for r in rows])

    def count(self, rows: list[PendingRow], outcomes: list[Outcome]) -> None:
        self.sender.count([r.message for r in rows], outcomes)

    # -- coordination -----------------------------------------------------------------
    async def want_notify(self) -> bool:
        """Make sure writers NOTIFY us; True if we just asked (so rows committed before
        then may have come without a NOTIFY, and the caller should look again). With
        ``listen`` off it never asks: polling alone finds new rows."""
        if self._notified or not self.config.listen:
            return False
        async with self._notify_lock:
            if self._notified:
                return False
            try:
                await self.store.wait_for_notify(self.config.instance, self.config.lease_ttl)
            except Exception as err:
                # Polling still finds the rows; NOTIFY only shortens the wait.
                log.warning("could not register for NOTIFY: %r", err)
                return False
            self._notified = True
            return True

    async def _refresh_notify(self) -> None:
        """Tick: keep our waiter row alive while a drainer idles, drop it otherwise."""
        async with self._notify_lock:
            if not self._notified:
                return
            if any(d.idle for d, _ in self._drainers.values()):
                await self.store.wait_for_notify(self.config.instance, self.config.lease_ttl)
            else:
                self._notified = False
                await self.store.stop_waiting(self.config.instance)

    def wake(self, partition: str) -> None:
        """New rows were committed in ``partition`` (a NOTIFY's payload): wake its
        drainer if this relay holds it. Anything else (``""``, not a number) wakes
        every drainer, so an old writer's NOTIFY still works."""
        held = self._drainers.get(int(partition)) if partition.isdigit() else None
        if held is not None:
            held[0].wake.set()
        elif not partition.isdigit():
            self.wake_all()

    def wake_all(self) -> None:
        """Rows may have been committed anywhere: wake every idle drainer."""
        for drainer, _ in self._drainers.values():
            drainer.wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Lease, drain and rebalance partitions until ``stop`` is set; then hand back.

        On ``stop``: each drainer finishes the batch in hand (publish and settle; one
        stuck past half a lease is cancelled, and its unsettled rows are republished
        later: at-least-once), leases are released so another relay takes over at
        once, publishers are stopped.
        """
        tick = self.config.lease_ttl / 3
        try:
            while not stop.is_set():
                try:
                    await self._tick()
                except Exception:
                    # Database hiccup: keep the loop alive; leases we failed to extend
                    # simply expire and their drainers stop on their own.
                    log.exception("relay coordination tick failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), tick)
        finally:
            await self._shutdown()

    async def _tick(self) -> None:
        ttl = self.config.lease_ttl
        member = f"{MEMBER_PREFIX}{self.config.instance}"
        if self._member is not None:
            self._member = await self.locks.extend(self._member, ttl)
        if self._member is None:
            self._member = await self.locks.try_acquire(member, ttl)
        # Drop drainers whose lease is lost and extend the rest. (A crashed drainer
        # was restarted at once by _drainer_ended, on the lease it holds.)
        for p, (drainer, task) in list(self._drainers.items()):
            if drainer.lost or task.done():
                await self._stop_drainer(p, release=not drainer.lost)
                continue
            lease = await self.locks.extend(drainer.lease, ttl)
            if lease is None:
                await self._stop_drainer(p, release=False)
            else:
                drainer.lease = lease
        members = max(1, await self.locks.held_count(MEMBER_PREFIX))
        share = math.ceil(self.config.partitions / members)
        # Give back extras so that newcomers find partitions free.
        for p in list(self._drainers)[share:]:
            await self._stop_drainer(p, release=True)
        order = list(range(self.config.partitions))
        random.shuffle(order)  # relays starting together should not all race for p=0
        for p in order:
            if len(self._drainers) >= share:
                break
            if p in self._drainers:
                continue
            lease = await self.locks.try_acquire(f"outbox-partition-{p}", ttl)
            if lease is not None:
                self._start_drainer(p, lease)
        self.metrics.partitions.set(len(self._drainers))
        await self._report_stalls()
        await self._refresh_notify()
        now = asyncio.get_running_loop().time()
        if now >= self._next_backlog:
            self._next_backlog = now + self.config.backlog_interval
            backlog = await self.store.backlog()
            self.metrics.backlog.set(backlog.pending)
            self.metrics.failed_rows.set(backlog.failed)
            self.metrics.oldest_age.set(backlog.oldest_pending_age)
        if now >= self._next_purge:
            # Hot/cold separation: archived rows leave after the retention period
            # (whole day partitions dropped); the coming days' partitions are prepared.
            self._next_purge = now + self.config.purge_interval
            await self.store.purge_archive(self.config.archive_retention_days)

    async def _report_stalls(self) -> None:
        """Stalled destinations into the metrics and ``outbox_stalls`` (written while
        there are some, cleared once when they end)."""
        stalls = self.sender.stalls()
        now = time.time()
        for broker in self.sender.publishers:
            mine = [s for s in stalls if s.broker == broker]
            self.metrics.stalled.labels(broker).set(len(mine))
            oldest = max((s.seconds(now) for s in mine), default=0.0)
            self.metrics.stall_age.labels(broker).set(oldest)
        if stalls or self._reported_stalls:
            await self.store.record_stalls(self.config.instance, stalls)
            self._reported_stalls = bool(stalls)

    def _start_drainer(self, partition: int, lease: Lease) -> None:
        drainer = PartitionDrainer(self, partition, lease)
        task = asyncio.create_task(drainer.run())
        task.add_done_callback(functools.partial(self._drainer_ended, partition, drainer))
        self._drainers[partition] = (drainer, task)

    def _drainer_ended(
        self, partition: int, drainer: PartitionDrainer, task: asyncio.Task[None]
    ) -> None:
        """A drainer that ends by an exception crashed (``run`` catches every
        ``Exception``, so this is rare): log it and restart it at once on the lease it
        holds, rather than leaving the partition idle until the lease expires."""
        if task.cancelled() or (err := task.exception()) is None:
            return
        log.error("partition %d: drainer crashed: %r; restarting", partition, err)
        current = self._drainers.get(partition)
        if current is not None and current[0] is drainer and not drainer.lost:
            self._start_drainer(partition, drainer.lease)

    async def _stop_drainer(self, partition: int, *, release: bool) -> None:
        """Stop one drainer. Handing back (``release``) lets it settle its batch first,
        within half a lease; a drainer whose lease is already lost is cancelled."""
        drainer, task = self._drainers.pop(partition)
        if release:
            drainer.stopping = True
            drainer.wake.set()
            await asyncio.wait({task}, timeout=self.config.lease_ttl / 2)
        task.cancel()
        # A crash was logged by _drainer_ended; cancellation is ours.
        await asyncio.gather(task, return_exceptions=True)
        if release:
            await best_effort(f"releasing partition {partition}", self.locks.release(drainer.lease))

    def held_partitions(self) -> list[int]:
        return sorted(self._drainers)

    async def _shutdown(self) -> None:
        for drainer, _ in self._drainers.values():  # all wind down together
            drainer.stopping = True
            drainer.wake.set()
        for p in list(self._drainers):
            await self._stop_drainer(p, release=True)
        if self._member is not None:
            await best_effort("releasing the member lock", self.locks.release(self._member))
        if self._notified:
            await best_effort(
                "unregistering from NOTIFY", self.store.stop_waiting(self.config.instance)
            )
        if self._reported_stalls:
            await best_effort(
                "clearing the reported stalls", self.store.record_stalls(self.config.instance, [])
            )
        await self.sender.stop()
