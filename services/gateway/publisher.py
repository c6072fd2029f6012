"""Publishes usage events to Kafka without ever holding up a response.

``publish`` only appends to a bounded in-memory queue; a background task drains it into the
aiokafka producer (acks=all) in batches and waits for the broker's acknowledgements. A failed
send is retried with backoff, so a broker blip delays events instead of losing them. The queue
bound protects the gateway's memory: when it is full the event is counted and logged as
dropped, loudly.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from schemas.events import UsageEvent, encode_event

log = structlog.get_logger(__name__)


class EventPublisher:
    def __init__(self, bootstrap: str, topic: str, max_queue: int) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._queue: asyncio.Queue[UsageEvent] = asyncio.Queue(maxsize=max_queue)
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        self.published = 0
        self.dropped = 0

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            acks="all",
            linger_ms=5,
            compression_type=None,
            request_timeout_ms=10_000,
        )
        await self._producer.start()
        self._task = asyncio.create_task(self._drain(), name="event-publisher")

    def publish(self, event: UsageEvent) -> None:
        """Non-blocking. Never raises."""
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            log.error("usage event queue full: event dropped", event_id=event.event_id, dropped_total=self.dropped)

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    async def _drain(self) -> None:
        assert self._producer is not None
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < 1000:
                batch.append(self._queue.get_nowait())
            await self._send(batch)

    async def _send(self, batch: list[UsageEvent]) -> None:
        assert self._producer is not None
        delay = 0.1
        while True:
            try:
                futures = [
                    await self._producer.send(self._topic, value=encode_event(e), key=e.org_id.encode())
                    for e in batch
                ]
                await asyncio.gather(*futures)
                self.published += len(batch)
                for _ in batch:
                    self._queue.task_done()
                return
            except KafkaError as exc:
                # Duplicates from a resend are harmless: the pricer stores each event_id once.
                log.error("publishing usage events failed; retrying", error=str(exc), events=len(batch), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Flush what is queued (up to ``timeout_s``), then stop the producer."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout_s)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._producer is not None:
            await self._producer.stop()
        unsent = self._queue.qsize()
        if unsent:
            log.error("gateway stopped with unpublished usage events", events=unsent)
