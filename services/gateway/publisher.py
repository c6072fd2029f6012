"""Publishes usage events to Kafka without ever holding up a response, and without losing them
when the broker is away.

- ``publish`` only appends to a bounded in-memory queue (non-blocking, never raises).
- A drain task sends queued events in batches (acks=all) and waits for the broker's
  acknowledgements, up to ``send_timeout_s``. When the broker does not acknowledge in time, or
  while older events are still spooled, the batch goes to the disk spool (fsync'd) instead.
- A replay task sends spooled segments, oldest first, and deletes each one once the broker
  acknowledged all of it. It also replays what a previous process left in the spool.

A send that timed out may still reach the broker later, and a replay may repeat events the
broker had taken: duplicates are harmless, since the pricer stores each event id once.
When the spool is full an event is dropped, counted and logged as an error: the only loss, and
a loud one.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import msgspec
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2
from aiokafka.producer.message_accumulator import BatchBuilder

from schemas.events import UsageEvent, encode_event
from services.gateway.spool import Spool

log = structlog.get_logger(__name__)


@dataclass
class PublisherStats:
    published: int = 0  # acknowledged by the broker, directly or from the spool
    spooled: int = 0
    replayed: int = 0
    dropped: int = 0  # lost: the queue or the spool was full
    send_failures: int = 0


class EventPublisher:
    def __init__(
        self, bootstrap: str, topic: str, max_queue: int, spool: Spool, *, send_timeout_s: float = 5.0
    ) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._queue: asyncio.Queue[UsageEvent] = asyncio.Queue(maxsize=max_queue)
        self._spool = spool
        # One thread for every spool operation: appends and replays never interleave.
        self._disk = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")
        self._send_timeout = send_timeout_s
        self._producer: AIOKafkaProducer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._connected = asyncio.Event()
        self._spool_has_data = not spool.is_empty()
        self._key_hash: dict[bytes, int] = {}  # key -> its murmur2, positive: the partitioner's input
        self.stats = PublisherStats()

    async def start(self) -> None:
        """Returns at once: the broker may be down at start-up; events spool until it is up."""
        self._tasks = [
            asyncio.create_task(self._connect(), name="publisher-connect"),
            asyncio.create_task(self._drain(), name="publisher-drain"),
            asyncio.create_task(self._replay(), name="publisher-replay"),
        ]

    def publish(self, event: UsageEvent) -> None:
        """Non-blocking. Never raises."""
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.stats.dropped += 1
            log.error("usage event queue full: event dropped", event_id=event.event_id, dropped_total=self.stats.dropped)

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    @property
    def spool_bytes(self) -> int:
        return self._spool.size_bytes

    # -- tasks ---------------------------------------------------------------------------

    async def _connect(self) -> None:
        delay = 0.2
        while True:
            producer = AIOKafkaProducer(
                bootstrap_servers=self._bootstrap, acks="all", linger_ms=5, request_timeout_ms=10_000
            )
            try:
                await producer.start()
            except KafkaError as exc:
                log.warning("broker not reachable yet; usage events go to the spool", error=str(exc))
                await producer.stop()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._producer = producer
            self._connected.set()
            return

    async def _send(self, payloads: list[bytes], keys: list[bytes]) -> bool:
        """Send and wait for every acknowledgement, up to the timeout. True when all arrived."""
        if self._producer is None:
            return False
        try:
            async with asyncio.timeout(self._send_timeout):
                await asyncio.gather(*await self._submit(self._producer, payloads, keys))
            return True
        except (KafkaError, TimeoutError) as exc:
            self.stats.send_failures += 1
            log.error("broker did not acknowledge usage events", error=repr(exc), events=len(payloads))
            return False

    async def _submit(self, producer: AIOKafkaProducer, payloads: list[bytes], keys: list[bytes]) -> list[asyncio.Future[object]]:
        """Hand the events to the producer as whole record batches, one per partition (another
        when one fills up): one future per batch, where ``send`` makes one per event and costs
        several times as much (the gateway's CPU per call is what bounds its latency). Each event
        goes where the default partitioner would put it (murmur2 of its key, as Java's client
        does), so an organisation's events stay on one partition."""
        partitions = sorted(await producer.partitions_for(self._topic))
        batches: dict[int, BatchBuilder] = {}
        futures: list[asyncio.Future[object]] = []
        for payload, key in zip(payloads, keys):
            hashed = self._key_hash.get(key)
            if hashed is None:
                if len(self._key_hash) > 10_000:
                    self._key_hash.clear()
                hashed = self._key_hash[key] = murmur2(key) & 0x7FFFFFFF
            partition = partitions[hashed % len(partitions)]
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = producer.create_batch()
            if batch.append(key=key, value=payload, timestamp=None) is None:  # full: send it, start the next
                futures.append(await producer.send_batch(batch, self._topic, partition=partition))
                batch = batches[partition] = producer.create_batch()
                batch.append(key=key, value=payload, timestamp=None)  # an empty batch takes any one record
        for partition, batch in batches.items():
            futures.append(await producer.send_batch(batch, self._topic, partition=partition))
        return futures

    async def _to_spool(self, payloads: list[bytes]) -> None:
        try:
            written = await asyncio.get_running_loop().run_in_executor(self._disk, self._spool.append, payloads)
        except OSError as exc:
            self.stats.dropped += len(payloads)
            log.error("spool write failed: usage events dropped", events=len(payloads), error=str(exc))
            return
        self.stats.spooled += written
        if written:
            self._spool_has_data = True
        if written < len(payloads):
            self.stats.dropped += len(payloads) - written
            log.error("SPOOL FULL: usage events dropped", events=len(payloads) - written,
                      dropped_total=self.stats.dropped, spool_bytes=self._spool.size_bytes)

    async def _drain(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < 1000:
                batch.append(self._queue.get_nowait())
            payloads = [encode_event(e) for e in batch]
            # Behind older spooled events, or with no broker: straight to disk.
            if self._spool_has_data or not await self._send(payloads, [e.org_id.encode() for e in batch]):
                await self._to_spool(payloads)
            else:
                self.stats.published += len(batch)
            for _ in batch:
                self._queue.task_done()

    async def _replay(self) -> None:
        loop = asyncio.get_running_loop()
        delay = 0.2
        while True:
            if not self._spool_has_data:
                await asyncio.sleep(0.1)
                continue
            await self._connected.wait()
            segment = await loop.run_in_executor(self._disk, self._spool.seal)
            if segment is None:
                self._spool_has_data = False
                continue
            payloads = await loop.run_in_executor(self._disk, self._spool.read, segment)
            # Keys from the payloads: the partition follows the organisation, as for live events.
            keys = [_org_key(p) for p in payloads]
            if payloads and not await self._send(payloads, keys):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.2
            await loop.run_in_executor(self._disk, self._spool.remove, segment)
            self.stats.replayed += len(payloads)
            self.stats.published += len(payloads)
            if payloads:
                log.info("replayed spooled usage events", events=len(payloads), spool_bytes=self._spool.size_bytes)

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Hand every queued event to the broker or the spool (up to ``timeout_s``), then stop.
        What is spooled stays on disk and is replayed by the next start."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._queue.join()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._producer is not None:
            await self._producer.stop()
        self._disk.shutdown(wait=True)
        unsent = self._queue.qsize()
        if unsent:
            self.stats.dropped += unsent
            log.error("gateway stopped with usage events neither sent nor spooled", events=unsent)


class _OrgOnly(msgspec.Struct):
    org_id: str = ""


_org_only = msgspec.json.Decoder(_OrgOnly)


def _org_key(payload: bytes) -> bytes:
    try:
        return _org_only.decode(payload).org_id.encode()
    except (msgspec.DecodeError, msgspec.ValidationError):
        return b""
