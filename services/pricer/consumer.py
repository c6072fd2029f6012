"""The pricer: one explicit chain of small steps per batch.

    poll -> decode -> (poison: dead-letter) -> attribute -> price -> batch -> write -> commit

Promises:
- an offset is committed only after every message before it is either stored, or dead-lettered
  and acknowledged by the broker;
- a batch closes at ``batch_max_events`` or ``batch_max_wait_s`` after its first message,
  whichever comes first, so spend is queryable within about a second of the call;
- a store failure is retried with backoff for as long as it lasts; nothing is skipped and nothing
  is committed meanwhile, and the consumer keeps its group membership by continuing to poll
  (paused) between attempts;
- a newly assigned partition is paused until it is recovered (the inserts its previous owner
  recorded from the committed offset on are replayed), and nothing of it is written, dead-lettered
  or committed before. Recovery runs in the consume loop, not in the rebalance listener: aiokafka
  hands out the new assignment's records while the listener still runs, and a commit made
  meanwhile would move the committed offset past a recorded insert that was never completed,
  hiding it from every later owner;
- one flush at a time: the consume loop and the revoke listener (aiokafka's coordinator task)
  share a lock, and the listener skips its flush when the loop holds it or a write is in flight;
- a flush is priced in the consume loop, then written (recorded, applied, committed) by a task
  while the loop reads and prices the next batch: the store's insert (a thread of its own) and
  the loop's decoding and pricing then take turns on different cores, not one after the other.
  At most one write is in flight; the next flush is priced before it, but written only after it
  has committed, so offsets are committed in order. A write that fails for good stops the
  pricer before anything after it is written or committed. Only the consume loop polls the
  consumer: a write that waits out a store outage sleeps, and the loop, once its next batch is
  due, waits for it polling paused;
- a flush is one insert for all its partitions, and a partition is never revoked while that
  insert is being recorded (the listener waits for the record), so every later owner of one of
  them finds the record and replays it;
- the event loop is never held for long: a poll returns at most ``POLL_MAX_RECORDS`` messages
  and pricing yields every ``PRICE_CHUNK`` events, so a backlog (a spool replayed after a broker
  outage, a pricer catching up) does not stall what shares the loop (in ``meterline up``, the
  gateway and the query service) for the whole of a 20k-event batch.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from schemas.events import UsageEvent
from services.common.settings import KafkaSettings, PricerSettings
from services.pricer import state
from services.pricer.attribution import PromptRegistry, Registration, attribute
from services.pricer.catalog import Catalog
from services.pricer.decode import Poison, decode
from services.pricer.dlq import PoisonBreaker
from services.pricer.pricing import price
from services.pricer.rows import UsageRow, to_row
from services.pricer.recovery import read_range
from services.pricer.sink import PartitionBatch, RecordedInsert, apply, intents_from, record, replay
from services.store import Store, StoreError

log = structlog.get_logger(__name__)

# About 10 ms of decoding (aiokafka's records and ours) between two turns of the event loop, up
# to twice that on a busy core; a batch of 20k events then takes twenty polls, which costs
# nothing measurable. The write task's steps (encoding, freeing) run between the same turns.
POLL_MAX_RECORDS = 1_000
# About 8 ms of attributing and pricing between two turns of the event loop.
PRICE_CHUNK = 1_000


@dataclass
class _Pending:
    """Messages read but not yet committed, per partition, in offset order."""

    events: dict[int, list[tuple[int, UsageEvent]]] = field(default_factory=dict)
    poison: list[tuple[int, int, bytes | None, bytes | None, str]] = field(default_factory=list)
    last_offset: dict[int, int] = field(default_factory=dict)  # every message counts, poison too
    opened_at: float | None = None
    count: int = 0

    def drop_partitions(self, partitions: set[int]) -> None:
        for p in partitions:
            self.events.pop(p, None)
            self.last_offset.pop(p, None)
        self.poison = [x for x in self.poison if x[0] not in partitions]
        self.count = sum(len(v) for v in self.events.values()) + len(self.poison)
        if not self.count:
            # Nothing left to wait for: a window still open would make every poll after it
            # return at once, empty, and the consume loop spin without yielding.
            self.opened_at = None


@dataclass
class _FlushInsert:
    """A flush's insert, recorded once (``None`` when nothing in the flush was new): a retry
    after a failure applies the same one."""

    recorded: bool = False
    insert: RecordedInsert | None = None


@dataclass
class _Staged:
    """A batch priced and taken out of ``_pending``, waiting to be written."""

    pending: _Pending
    batches: list[PartitionBatch]


async def _release(stored: _Pending, batches: list[PartitionBatch], flush: _FlushInsert) -> None:
    """Free a stored batch ``PRICE_CHUNK`` events and rows at a time, yielding to the event loop
    between: its tens of thousands of events and rows, freed in one go, would hold the loop for
    tens of milliseconds (and a partition's share of them, for up to 30 ms while the next batch
    is being read and priced on the same loop)."""
    flush.insert = None  # its list only: the rows are the batches' own
    for batch in batches:
        events = stored.events.get(batch.partition, [])
        while batch.rows or events:
            del batch.rows[-PRICE_CHUNK:], events[-PRICE_CHUNK:]
            await asyncio.sleep(0)
    batches.clear()
    stored.events.clear()


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, pricer: Pricer) -> None:
        self._pricer = pricer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._pricer.on_revoked({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._pricer.on_assigned({tp.partition for tp in assigned})


class Pricer:
    def __init__(self, store: Store, kafka: KafkaSettings, settings: PricerSettings, bootstrap: str) -> None:
        self._store = store
        self._kafka = kafka
        self._settings = settings
        self._bootstrap = bootstrap
        self._pending = _Pending()
        self._breaker = PoisonBreaker(settings.dlq_breaker_window, settings.dlq_breaker_ratio)
        self._catalog = Catalog()
        self._registry = PromptRegistry()
        self._state_checked_at = 0.0  # monotonic
        self._state_as_of = datetime.min.replace(tzinfo=timezone.utc)  # wall clock when last checked
        self._state_marker: state.Marker | None = None  # None: reload at the next check
        self._stopping = asyncio.Event()
        self._flush_lock = asyncio.Lock()  # one flush or recovery at a time (loop or listener)
        # Held while a flush's insert is recorded; the revoke listener waits for it (see _record).
        self._record_lock = asyncio.Lock()
        self._writing: asyncio.Task[None] | None = None  # the write in flight, or one that failed
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self.stored_total = 0  # rows written by this process, for logs and tests
        self.committed: dict[int, int] = {}  # partition -> next offset to read, as last committed
        self._owned: set[int] = set()  # partitions assigned to this pricer now
        self._unrecovered: set[int] = set()  # owned, paused, previous owner's inserts not yet replayed
        self._assignments = 0  # counts assignments, so a recovery overtaken by a new one is redone

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(bootstrap_servers=self._bootstrap, acks="all")
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=self._settings.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=min(self._settings.batch_max_events, POLL_MAX_RECORDS),
            fetch_max_wait_ms=100,
            session_timeout_ms=self._settings.session_timeout_ms,
            heartbeat_interval_ms=max(self._settings.session_timeout_ms // 3, 300),
        )
        self._consumer.subscribe([self._kafka.raw_topic], listener=_Rebalance(self))
        await self._consumer.start()

    def stop(self) -> None:
        self._stopping.set()

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()  # flushes nothing: uncommitted work is re-read by the next owner
        if self._producer is not None:
            await self._producer.stop()

    async def run(self) -> None:
        """Consume until ``stop()``; flushes what is pending before returning."""
        assert self._consumer is not None
        try:
            while not self._stopping.is_set():
                self._settle_write()  # a write that failed for good ends the pricer here
                if self._unrecovered:
                    async with self._flush_lock:
                        # A write in flight may still commit: recovery reads the committed
                        # offsets, so it waits for that commit first.
                        await self._await_write()
                        await self._with_retry(self._recover_once, retry=True)
                records = await self._consumer.getmany(timeout_ms=self._poll_timeout_ms(), max_records=self._poll_size())
                for tp, messages in records.items():
                    self._accept(tp.partition, messages)
                if records:
                    # getmany returns without suspending while aiokafka holds records it fetched
                    # ahead: without this, a backlog is decoded poll after poll, loop unturned.
                    await asyncio.sleep(0)
                if self._due():
                    async with self._flush_lock:
                        if self._due():  # the revoke listener may have flushed or dropped it meanwhile
                            await self._flush()
            async with self._flush_lock:
                if self._pending.count:
                    await self._flush()
                await self._await_write()
        except StoreError:
            if not self._stopping.is_set():
                raise
            log.warning("stopped with an unwritten batch; its messages stay uncommitted and will be re-read")
        finally:
            if self._writing is not None and not self._writing.done():
                # Cancelled (or failed) with a write in flight: stop it as a crash would. What it
                # recorded is replayed by the partition's next owner, under the same token.
                self._writing.cancel()
                await asyncio.gather(self._writing, return_exceptions=True)
            log.info("pricer stopped", stored_total=self.stored_total)

    # -- rebalance ------------------------------------------------------------------------

    @property
    def partitions(self) -> frozenset[int]:
        """The partitions this pricer owns now."""
        return frozenset(self._owned)

    async def on_assigned(self, partitions: set[int]) -> None:
        """Pause the partitions until the consume loop has recovered them (see the module
        docstring for why not here)."""
        log.info("partitions assigned", partitions=sorted(partitions))
        assert self._consumer is not None
        self._assignments += 1
        self._owned |= partitions
        self._unrecovered |= partitions
        self._consumer.pause(*(self._tp(p) for p in partitions))

    def _tp(self, partition: int) -> TopicPartition:
        return TopicPartition(self._kafka.raw_topic, partition)

    def _writable(self, partition: int) -> bool:
        return partition in self._owned and partition not in self._unrecovered

    async def _recover_once(self) -> None:
        """Finish what previous owners may have left half-written in the partitions not yet
        recovered, then let the consume loop read them from their committed offsets."""
        assert self._consumer is not None
        await self._refresh_state()
        replayed: set[str] = set()  # an insert over several of these partitions is replayed once
        for p in sorted(self._unrecovered):
            assignments = self._assignments
            tp = self._tp(p)
            try:
                committed = await self._consumer.committed(tp)
                await self._replay_intents(p, committed or 0, replayed)
                if assignments != self._assignments or p not in self._unrecovered:
                    continue  # it changed hands meanwhile: a new assignment is recovered anew
                # Anything read of it before it was paused is dropped and read again, in order.
                self._pending.drop_partitions({p})
                if committed is None:
                    await self._consumer.seek_to_beginning(tp)
                else:
                    self._consumer.seek(tp, committed)
                self._consumer.resume(tp)
            except (KafkaError, IllegalStateError) as exc:
                # Mid-rebalance or a broker outage: p stays unrecovered (paused and uncommitted)
                # and the consume loop tries again on its next turn.
                log.warning("could not recover partition yet", partition=p, error=repr(exc))
                continue
            if assignments == self._assignments:
                self._unrecovered.discard(p)

    async def _replay_intents(self, partition: int, committed: int, replayed: set[str]) -> None:
        """Replay, whole, each insert recorded with the partition's messages from ``committed``
        on, reading every partition it held (outside the consumer group)."""
        for intent in await intents_from(self._store, self._kafka.raw_topic, partition, committed):
            if intent.dedup_token in replayed:
                continue
            entries: dict[int, list[tuple[int, UsageEvent]]] = {}
            for s in intent.slices:
                messages = await read_range(self._bootstrap, self._kafka.raw_topic, s.partition, s.first_offset, s.last_offset)
                entries[s.partition] = [(offset, e) for offset, value in messages if not isinstance(e := decode(value), Poison)]
            # Priced with the state the first run saw (or newer): the views it completes must
            # agree with the table.
            await self._refresh_state(max((e.started_at for es in entries.values() for _, e in es), default=None))
            registrations: list[Registration] = []
            rows = {p: await self._rows(p, es, registrations) for p, es in entries.items()}
            await state.register_prompts(self._store, registrations)
            written = await replay(self._store, intent, rows)
            replayed.add(intent.dedup_token)
            log.info("replayed a recorded insert", partition=partition, token=intent.dedup_token, rows=written,
                     slices=[(s.partition, s.first_offset, s.last_offset) for s in intent.slices])

    async def on_revoked(self, partitions: set[int]) -> None:
        """Write what we hold for partitions we are losing, so the next owner need not redo it.
        If the store is down, give it up: the next owner re-reads from the committed offset."""
        # When the consume loop holds the lock, or a write is in flight, it is flushing already
        # (and will not commit what we lose); waiting for it here could hold up the rebalance for
        # long, as could a write that failed (the consume loop stops on it).
        if self._pending.count and not self._flush_lock.locked() and not self._write_unsettled():
            async with self._flush_lock:
                try:
                    await self._flush(retry=False, wait=True)
                except Exception as exc:  # noqa: BLE001 - any failure here means: leave it to the next owner
                    log.warning("flush on revoke failed; leaving the batch to the next owner", error=str(exc))
        # A record the consume loop is making is finished first, as ours: the rebalance (and the
        # next owner's recovery) waits for this listener, so that owner then finds the record.
        async with self._record_lock:
            self._pending.drop_partitions(partitions)
            self._owned -= partitions
            self._unrecovered -= partitions  # the next owner recovers them

    # -- steps ------------------------------------------------------------------------------

    def _accept(self, partition: int, messages: list[Any]) -> None:
        """Decode one partition's messages (in offset order) into the pending batch. Non-blocking.
        Raises when the poison breaker trips. Per message this is the pricer's hottest loop."""
        if not messages:
            return
        pending, breaker = self._pending, self._breaker
        events = pending.events.setdefault(partition, [])
        for m in messages:
            decoded = decode(m.value)
            if isinstance(decoded, Poison):
                breaker.record(True)
                pending.poison.append((partition, m.offset, m.key, m.value, decoded.reason))
            else:
                breaker.record(False)
                events.append((m.offset, decoded))
            pending.last_offset[partition] = m.offset
            pending.count += 1
        if pending.opened_at is None:
            pending.opened_at = time.monotonic()

    def _due(self) -> bool:
        p = self._pending
        if not p.count:
            return False
        return p.count >= self._settings.batch_max_events or (
            time.monotonic() - (p.opened_at or 0) >= self._settings.batch_max_wait_s
        )

    def _poll_size(self) -> int:
        """At most ``POLL_MAX_RECORDS``, and no more than the batch has room for: a backlog then
        fills batches of exactly ``batch_max_events``."""
        return max(1, min(POLL_MAX_RECORDS, self._settings.batch_max_events - self._pending.count))

    def _poll_timeout_ms(self) -> int:
        if self._pending.opened_at is None or not self._pending.count:
            return 500
        left = self._settings.batch_max_wait_s - (time.monotonic() - self._pending.opened_at)
        return max(0, int(left * 1000))

    async def _refresh_state(self, newest_event: datetime | None = None) -> None:
        """Bring price overrides and the prompt registry up to date when older than the refresh
        interval, or when the batch holds events newer than the last check: an activation or
        override made before such an event must be seen when attributing and pricing it. Live
        traffic asks on every flush, so a cheap change marker is read first and the state itself
        only when it moved. Blocking (one small store read, three more on a change)."""
        stale = time.monotonic() - self._state_checked_at >= self._settings.catalog_refresh_s
        if self._state_marker is not None and not stale and (newest_event is None or newest_event < self._state_as_of):
            return
        as_of = datetime.now(timezone.utc)  # before reading: what was written until now is seen
        marker = await state.marker(self._store)
        if marker != self._state_marker:
            self._catalog = await state.load_catalog(self._store)
            self._registry = await state.load_registry(self._store)
            self._state_marker = marker
        self._state_checked_at = time.monotonic()
        self._state_as_of = as_of

    async def _rows(
        self, partition: int, entries: list[tuple[int, UsageEvent]], registrations: list[Registration]
    ) -> list[UsageRow]:
        """Attribute and price events into rows, yielding to the event loop every ``PRICE_CHUNK``
        events. Pure apart from the registry's memory."""
        rows: list[UsageRow] = []
        registry, catalog, topic = self._registry, self._catalog, self._kafka.raw_topic
        for start in range(0, len(entries), PRICE_CHUNK):
            if start:
                await asyncio.sleep(0)
            for offset, event in entries[start:start + PRICE_CHUNK]:
                version, registration = attribute(event, registry)
                if registration is not None:
                    registry.record(registration)
                    registrations.append(registration)
                rows.append(to_row(price(event, catalog), version, topic, partition, offset))
        return rows

    async def _price_partition(self, partition: int, registrations: list[Registration]) -> PartitionBatch | None:
        # Read before pricing yields: the revoke listener may drop the partition from the pending
        # batch meanwhile (it does not wait for a flush), and the batch is then written for no one.
        last = self._pending.last_offset.get(partition)
        if last is None:
            return None  # dropped by the revoke listener while an earlier partition was priced
        entries = self._pending.events.get(partition, [])
        rows = await self._rows(partition, entries, registrations)
        first = entries[0][0] if entries else last
        return PartitionBatch(self._kafka.raw_topic, partition, first, last, rows)

    async def _dead_letter(self) -> None:
        """Publish poison to the dead-letter topic and wait for the broker's acknowledgement."""
        assert self._producer is not None
        sends = []
        for partition, offset, key, value, reason in self._pending.poison:
            log.warning("dead-lettering event", partition=partition, offset=offset, reason=reason)
            headers = [
                ("reason", reason.encode()),
                ("source", f"{self._kafka.raw_topic}:{partition}:{offset}".encode()),
            ]
            sends.append(await self._producer.send(self._kafka.dlq_topic, value=value or b"", key=key, headers=headers))
        await asyncio.gather(*sends)

    async def _write_all(self, batches: list[PartitionBatch], flush: _FlushInsert) -> int:
        """Record the flush's insert once, then apply it. ``flush`` lives for the whole flush, so
        a retry after a failure applies the same insert."""
        if not flush.recorded:
            flush.insert = await self._record(batches)
            flush.recorded = True
        insert = flush.insert
        # Applied whole even when some of its partitions were lost since it was recorded: their
        # new owners recover them after the record (see _record), so they replay this same
        # insert, under its token, and ClickHouse stores it once. Left to them when all were lost.
        if insert is None or not any(self._writable(p) for p in insert.partitions):
            return 0
        await apply(self._store, insert)
        return len(insert.rows)

    async def _record(self, batches: list[PartitionBatch]) -> RecordedInsert | None:
        """Record one insert of the batches of partitions still ours (one lost before, or lost
        and assigned anew, is left out). Under ``_record_lock``, which the revoke listener waits
        for: a partition is never lost while its insert is being recorded. Lost then, its new
        owner could recover it before the record existed, store its events itself, and this
        insert, holding them too under another token, store them a second time. So every owner
        that gets a partition of this insert later recovers it after the record, and replays it.
        Holds a rebalance for the already-stored read and the insert into ingest_batches at most."""
        async with self._record_lock:
            return await record(self._store, [b for b in batches if b.rows and self._writable(b.partition)])

    async def _flush(self, *, retry: bool = True, wait: bool = False) -> None:
        """Price the pending batch, then hand it to a write task once the write before it has
        committed; ``wait``: also wait for this one's. Retries store failures with backoff
        (keeping group membership) unless ``retry`` is False. The caller holds ``_flush_lock``."""
        try:
            staged = await self._price_pending(retry)
        except BaseException:
            # Registrations may be in the registry's memory without being stored: rebuild it.
            self._state_marker = None
            raise
        await self._await_write(poll=retry)
        self._writing = asyncio.create_task(self._write(staged, retry))
        if wait:
            try:
                await self._await_write(poll=retry)
            except BaseException:
                # Only the revoke listener waits, and gives its batch up when the write fails.
                # The batch is out of ``_pending`` already, so every partition kept is recovered
                # (read again from its committed offset) instead of read on past what was lost.
                self._writing = None
                self._unrecovered |= self._owned
                raise

    async def _price_pending(self, retry: bool) -> _Staged:
        """Attribute and price the pending batch, store the prompts it registers and dead-letter
        its poison; then take it out of ``_pending``, which starts the next batch."""
        # Messages of a partition not writable (not recovered yet) are dropped: recovery seeks
        # it back to its committed offset and they are read again.
        self._pending.drop_partitions({p for p in self._pending.last_offset if not self._writable(p)})
        newest = max((e.started_at for entries in self._pending.events.values() for _, e in entries), default=None)
        await self._with_retry(lambda: self._refresh_state(newest), retry)
        registrations: list[Registration] = []
        batches = []
        for p in sorted(self._pending.last_offset):
            if (batch := await self._price_partition(p, registrations)) is not None:
                batches.append(batch)
        # Before the insert that uses them: the next batch's state refresh may reload the
        # registry from the store while this one is written, and must find them there.
        await self._with_retry(lambda: state.register_prompts(self._store, registrations), retry)
        if self._pending.poison:
            await self._dead_letter()
        staged, self._pending = _Staged(self._pending, batches), _Pending()
        return staged

    async def _write(self, staged: _Staged, retry: bool) -> None:
        """Record and apply a priced batch's insert, then commit its offsets (the write task)."""
        assert self._consumer is not None
        flush = _FlushInsert()
        written = await self._with_retry(lambda: self._write_all(staged.batches, flush), retry, poll=False)
        # A partition lost, or assigned anew, while we wrote is not committed: its next owner (or
        # our own recovery) reads it again from the committed offset.
        offsets = {self._tp(p): last + 1 for p, last in staged.pending.last_offset.items() if self._writable(p)}
        try:
            if offsets:  # aiokafka refuses an empty commit
                await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # We lost the partitions while writing. The rows are stored; the next owner reads the
            # messages again and drops the events already stored. The batch being read meanwhile
            # is left to the rebalance: what it takes from us is dropped from it, and what it
            # gives back is recovered (sought to its committed offset) before being written.
            log.warning("offset commit refused after a rebalance; the next owner will skip what we stored", error=str(exc))
            return
        for tp, offset in offsets.items():
            self.committed[tp.partition] = offset
        self.stored_total += written
        log.debug("batch stored", rows=written, messages=staged.pending.count, partitions=len(offsets))
        await _release(staged.pending, staged.batches, flush)

    def _write_unsettled(self) -> bool:
        """A write is in flight, or failed and the consume loop has not stopped on it yet."""
        w = self._writing
        return w is not None and (not w.done() or w.cancelled() or w.exception() is not None)

    async def _await_write(self, *, poll: bool = True) -> None:
        """Wait for the write in flight, polling paused meanwhile (as a store retry does) so that
        a long store outage does not cost the group membership; ``poll`` False (the revoke
        listener) only waits. Raises what it failed with, every time: nothing after a failed
        write may be written or committed."""
        w = self._writing
        if w is None:
            return
        if not poll:
            await asyncio.wait({w})
        elif not w.done():
            assert self._consumer is not None
            paused = False
            try:
                while not w.done():
                    await asyncio.wait({w}, timeout=1.0)
                    if not w.done():
                        await self._poll_paused(0.1)
                        paused = True
            finally:
                if paused:
                    self._resume_writable()
        self._settle_write()

    def _settle_write(self) -> None:
        """Forget a write that is done, or raise what it failed with (every time: nothing after a
        failed write may be written or committed)."""
        if self._writing is not None and self._writing.done():
            self._writing.result()
            self._writing = None

    def _resume_writable(self) -> None:
        """Resume the partitions paused for polling, leaving those not recovered yet paused."""
        assert self._consumer is not None
        self._consumer.resume(*(tp for tp in self._consumer.assignment() if self._writable(tp.partition)))

    async def _with_retry(self, step: Any, retry: bool, *, poll: bool = True) -> Any:
        """``poll``: poll paused between attempts, in the consume loop only (see the module
        docstring); the write task sleeps instead."""
        delay = 0.1
        paused = False
        assert self._consumer is not None
        try:
            while True:
                try:
                    return await step()
                except StoreError as exc:
                    # The step may have recorded prompt registrations in the registry that never
                    # reached the store: rebuild it from the store before it is used again.
                    self._state_marker = None
                    if not retry or self._stopping.is_set():
                        raise
                    log.error("store write failed; retrying", error=str(exc)[:500], retry_in_s=delay)
                    if poll:
                        await self._poll_paused(delay)
                        paused = True
                    else:
                        await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
        finally:
            if paused:
                self._resume_writable()

    async def _poll_paused(self, seconds: float) -> None:
        """Poll (to stay in the group) without taking messages. Paused again on every pass: a
        rebalance meanwhile brings a new assignment, and what it hands out anyway is put back
        (sought to again) rather than skipped."""
        assert self._consumer is not None
        self._consumer.pause(*self._consumer.assignment())
        records = await self._consumer.getmany(timeout_ms=int(seconds * 1000))
        for tp, messages in records.items():
            if messages:
                self._consumer.seek(tp, messages[0].offset)
