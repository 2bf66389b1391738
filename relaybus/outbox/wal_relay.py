"""The WAL relay: publishes outbox inserts read from a logical replication slot."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from relaybus.backoff import Backoff
from relaybus.brokers.publisher import PublishError
from relaybus.locks.base import Lease, LockBackend
from relaybus.outbox.metrics import RelayMetrics
from relaybus.outbox.pgoutput import lsn_text
from relaybus.outbox.routed import RoutedPublisher, best_effort
from relaybus.outbox.wal_rows import OutboxWalDecoder, WalBadRow, WalCommit, WalEvent, WalItem
from relaybus.outbox.wal_store import WalRelayStore
from relaybus.outbox.wal_stream import WalStream, WalStreamError

log = logging.getLogger(__name__)

LOCK_PREFIX = "relay-wal:"


@dataclass(frozen=True)
class WalRelayConfig:
    """Tuning of one WAL relay process (defaults: ``relaybus.settings.Settings``)."""

    slot: str = "relaybus_outbox"
    publication: str = "relaybus_outbox"
    batch_size: int = 500
    lease_ttl: float = 10.0
    backoff_initial: float = 0.2
    backoff_max: float = 10.0
    instance: str = "relay"
    max_buffer_bytes: int = 64 * 1024 * 1024
    # Delete published rows from the table (off when writers delete their own rows
    # in the inserting transaction: the WAL keeps the insert, the table stays empty).
    delete_published: bool = True
    # Short: each clean-up's deletes pass through the walsender's decoding, and many
    # at once delay the inserts behind them.
    cleanup_interval: float = 0.25
    progress_interval: float = 1.0
    # Deferred rows (a stalled Kafka partition) are offered again this often: the
    # publisher answers at once while the partition stalls, so this bounds how late
    # the stream resumes after the partition's new leader is elected.
    stall_recheck: float = 0.5


class _LeaseLost(Exception):
    """Our lease on the slot expired or passed to another relay."""


class _LeaseKeeper:
    """Extends a lease every TTL/3 until stopped; sets ``lost`` if it cannot."""

    def __init__(self, locks: LockBackend, lease: Lease, ttl: float) -> None:
        self.locks = locks
        self.lease = lease
        self.ttl = ttl
        self.lost = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(self.ttl / 3)
            try:
                extended = await self.locks.extend(self.lease, self.ttl)
            except Exception:
                # The store is unreachable: the lease still holds until it expires.
                log.exception("wal relay: extending the slot lease failed")
                extended = self.lease if self.lease.remaining() > 0 else None
            if extended is None:
                self.lost.set()
                return
            self.lease = extended


class WalRelay:
    """Streams the outbox's inserts from a replication slot and publishes them.

    - **Order**: rows are published in WAL order, which is commit order (so per-key
      order, as the writer's key lock makes a key's commits sequential), one batch
      at a time; a batch may span transactions or split one.
    - **Delivery**: at least once. The slot's flushed LSN is confirmed only up to the
      last transaction whose every row the brokers acknowledged (or that was
      recorded as failed), so after a crash the slot replays from there and
      consumers dedupe by message id.
    - **Failures**: a broker that cannot be reached (``PublishError``) retries the
      same batch with jittered exponential backoff, and deferred outcomes (a stalled
      Kafka partition) offer their rows again every ``stall_recheck`` seconds,
      never skipping them; the batch, and so the
      stream, waits for them (one confirmed position per slot: unlike the polling
      relay, a stalled partition holds back every key until it recovers). A row a
      broker refuses, or that cannot become a message, is kept
      in the outbox as ``failed`` with its error (``relaybus outbox failed``); unlike
      the polling relay, later rows of its key are not held back.
    - **One active relay per slot**: the lease lock ``relay-wal:<slot>`` picks it (the
      server also refuses a second consumer of a slot); the others wait as standbys
      and take over within a lease TTL of the active one dying.
    """

    def __init__(
        self,
        stream_factory: Callable[[], WalStream],
        store: WalRelayStore,
        locks: LockBackend,
        sender: RoutedPublisher,
        config: WalRelayConfig,
        metrics: RelayMetrics,
    ) -> None:
        self._stream_factory = stream_factory
        self.store = store
        self.locks = locks
        self.sender = sender
        self.config = config
        self.metrics = metrics
        self.decoder = OutboxWalDecoder()
        self.active = asyncio.Event()  # set while this relay holds the slot's lease
        self.confirmed = 0
        self._last_progress = 0.0
        # Highest sequence published, and the last one cleaned up to.
        self.published_upto = 0
        self._cleaned_upto = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Wait for the slot's lease, stream and publish until ``stop`` is set or the
        lease is lost (then wait for it again); on ``stop``, finish the batch in hand,
        confirm it, release the lease and stop the publishers."""
        ttl = self.config.lease_ttl
        name = f"{LOCK_PREFIX}{self.config.slot}"
        try:
            while not stop.is_set():
                try:
                    lease = await self.locks.try_acquire(name, ttl)
                except Exception:
                    log.exception("wal relay: could not ask for the lease %s", name)
                    lease = None
                if lease is None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), ttl / 3)
                    continue
                log.info("wal relay %s: active on slot %s", self.config.instance, self.config.slot)
                await self._hold(lease, stop)
        finally:
            await self.sender.stop()

    async def _hold(self, lease: Lease, stop: asyncio.Event) -> None:
        """Stream while the lease holds: a keeper task extends it every TTL/3."""
        keeper = _LeaseKeeper(self.locks, lease, self.config.lease_ttl)
        keeping = asyncio.create_task(keeper.run(stop))
        cleaning = asyncio.create_task(self._clean_up(stop))
        self.active.set()
        backoff = Backoff(self.config.backoff_initial, self.config.backoff_max)
        try:
            while not stop.is_set() and not keeper.lost.is_set():
                try:
                    await self._session(stop, keeper.lost, backoff)
                except _LeaseLost:
                    break
                except (WalStreamError, OSError) as err:
                    delay = backoff.next_delay()
                    self.metrics.failures.labels("stream").inc()
                    log.warning("wal relay: %s; reconnecting in %.1fs", err, delay)
                    await _sleep_unless(stop, delay)
                except Exception:
                    delay = backoff.next_delay()
                    self.metrics.failures.labels("error").inc()
                    log.exception("wal relay: session failed; restarting in %.1fs", delay)
                    await _sleep_unless(stop, delay)
        finally:
            self.active.clear()
            keeping.cancel()
            cleaning.cancel()
            await asyncio.gather(keeping, cleaning, return_exceptions=True)
            if not keeper.lost.is_set():
                await best_effort("releasing the slot lease", self.locks.release(keeper.lease))
            else:
                log.warning("wal relay: lease on slot %s lost; standing by", self.config.slot)

    async def _session(self, stop: asyncio.Event, lost: asyncio.Event, backoff: Backoff) -> None:
        """One replication connection: read, publish, confirm, until stop or error."""
        stream = self._stream_factory()
        await stream.open()
        self.decoder = OutboxWalDecoder()  # relations are re-sent on every connection
        pending: deque[WalItem] = deque()
        try:
            while not lost.is_set():
                if stop.is_set():
                    return  # what was not confirmed is sent again to the next streamer
                if not pending:
                    read = asyncio.create_task(stream.read())
                    halt = asyncio.create_task(_first(stop, lost))
                    await asyncio.wait({read, halt}, return_when=asyncio.FIRST_COMPLETED)
                    halt.cancel()
                    if not read.done():
                        read.cancel()
                        await asyncio.gather(read, return_exceptions=True)
                        continue
                    for raw in read.result():
                        item = self.decoder.feed(raw)
                        if item is not None:
                            pending.append(item)
                    continue
                batch = _take(pending, self.config.batch_size)
                if not await self._publish(batch, stop, lost, backoff):
                    if lost.is_set():
                        raise _LeaseLost
                    return  # stopped during a broker outage: the batch stays unconfirmed
                commits = [i for i in batch if isinstance(i, WalCommit)]
                if commits:
                    self._confirm(stream, commits[-1].end_lsn)
                    await self._note_progress()
        finally:
            await stream.close()

    async def _publish(
        self, batch: list[WalItem], stop: asyncio.Event, lost: asyncio.Event, backoff: Backoff
    ) -> bool:
        """Publish the batch's events until every one is acknowledged or recorded as
        failed (True); False if stopped or the lease lost before that (backoff waits
        end early for either)."""
        events = [i for i in batch if isinstance(i, WalEvent)]
        failed: list[tuple[WalEvent | WalBadRow, str]] = [
            (i, i.error) for i in batch if isinstance(i, WalBadRow)
        ]
        for bad in failed:
            log.error("wal relay: %s", bad[1])
        while events:
            if stop.is_set() or lost.is_set():
                return False
            try:
                outcomes = await self.sender.publish([e.message for e in events])
            except PublishError as err:
                delay = backoff.next_delay()
                self.metrics.failures.labels("transient").inc()
                log.warning("wal relay: %s; retrying %d rows in %.1fs", err, len(events), delay)
                await _sleep_unless(stop, delay, lost)
                continue
            settled = [(e, o) for e, o in zip(events, outcomes, strict=True) if not o.deferred]
            self.sender.count([e.message for e, _ in settled], [o for _, o in settled])
            failed += [(e, o.error) for e, o in settled if o.error]
            sequences = [e.columns.get("sequence") or "0" for e, _ in settled]
            if sequences:
                self.published_upto = max(self.published_upto, *map(int, sequences))
            events = [e for e, o in zip(events, outcomes, strict=True) if o.deferred]
            if events:
                # Not known delivered (a stalled Kafka partition): send those again;
                # the rest is settled and not sent twice. The slot is confirmed only
                # past this batch, so a crash meanwhile replays it (consumers dedupe).
                await _sleep_unless(stop, self.config.stall_recheck, lost)
                continue
            backoff.reset()
        if lost.is_set():
            return False
        if failed:
            beyond = await self.store.record_failed(failed)
            if beyond:
                self.metrics.failures.labels("undecodable").inc(beyond)
        return True

    async def _clean_up(self, stop: asyncio.Event) -> None:
        """Every ``cleanup_interval``, delete the published rows from the table in one
        statement, off the publishing path (the WAL, not the table, is what this
        relay reads: the rows are only there for the writers' transaction)."""
        if not self.config.delete_published:
            return
        while not stop.is_set():
            await _sleep_unless(stop, self.config.cleanup_interval)
            upto = self.published_upto
            if upto <= self._cleaned_upto:
                continue
            try:
                await self.store.delete_upto(upto)
                self._cleaned_upto = upto
            except Exception as err:
                # Only housekeeping: the next round deletes these rows too.
                log.warning("wal relay: clean-up up to sequence %d failed: %r", upto, err)

    def _confirm(self, stream: WalStream, lsn: int) -> None:
        stream.confirm(lsn)
        self.confirmed = max(self.confirmed, lsn)

    async def _note_progress(self) -> None:
        now = time.monotonic()
        if now - self._last_progress < self.config.progress_interval:
            return
        self._last_progress = now
        try:
            await self.store.record_progress(self.config.slot, self.confirmed, self.config.instance)
        except Exception as err:
            # Only what `outbox status` shows; the slot itself holds the position.
            at = lsn_text(self.confirmed)
            log.warning("wal relay: could not note progress at %s: %r", at, err)


def _take(pending: deque[WalItem], batch_size: int) -> list[WalItem]:
    """Items up to ``batch_size`` events, plus the commit that follows the last one
    if it is next (so a full batch still confirms its transaction)."""
    batch: list[WalItem] = []
    events = 0
    while pending and events < batch_size:
        item = pending.popleft()
        batch.append(item)
        if not isinstance(item, WalCommit):
            events += 1
    if pending and isinstance(pending[0], WalCommit):
        batch.append(pending.popleft())
    return batch


async def _first(*events: asyncio.Event) -> None:
    """Returns once any of ``events`` is set."""
    waits = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


async def _sleep_unless(stop: asyncio.Event, delay: float, *more: asyncio.Event) -> None:
    """Sleep ``delay`` seconds, or less if ``stop`` (or any of ``more``) is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(_first(stop, *more), delay)
