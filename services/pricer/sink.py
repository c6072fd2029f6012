"""Writes priced rows so that each Kafka message is stored exactly once.

Two mechanisms, each covering a different failure:
- **Retried insert** (the store timed out, the answer was lost): the retry carries the same
  deduplication token, derived from topic, partition and offset range, so ClickHouse drops it in
  ``usage_events`` and in every materialized view fed by it.
- **Crash between insert and offset commit**: the next owner of the partition cannot rebuild the
  same batch (batches close on size *or* time), so tokens do not help. Instead, it reads how far
  the store already got for the partition (``ingest_offsets``) and, for messages up to there,
  drops the events the store already holds before inserting.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.store import Store


@dataclass(frozen=True)
class PartitionBatch:
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    rows: list[dict[str, Any]]

    @property
    def dedup_token(self) -> str:
        # The digest of the event ids keeps tokens unique when a topic is recreated and its
        # offsets start again from zero (the embedded broker keeps topics in memory only).
        digest = hashlib.blake2b(digest_size=8)
        for row in self.rows:
            digest.update(row["event_id"].encode())
        return f"{self.topic}:{self.partition}:{self.first_offset}-{self.last_offset}:{digest.hexdigest()}"


async def stored_high_water(store: Store, topic: str, partitions: Iterable[int]) -> dict[int, int]:
    """The highest offset stored per partition (absent where nothing was ever stored)."""
    wanted = sorted(set(partitions))
    if not wanted:
        return {}
    rows = await store.select(
        "SELECT kafka_partition AS p, max(max_offset) AS o FROM ingest_offsets"
        " WHERE kafka_topic = {topic:String} AND kafka_partition IN {parts:Array(UInt32)} GROUP BY p",
        {"topic": topic, "parts": wanted},
    )
    return {int(r["p"]): int(r["o"]) for r in rows}


async def already_stored(store: Store, rows: Sequence[dict[str, Any]]) -> set[str]:
    """Event ids among ``rows`` that the store holds already. Bounded by the batch's organisations
    and time range so it reads a few granules, not the table."""
    if not rows:
        return set()
    started: list[datetime] = [r["started_at"] for r in rows]
    found = await store.select(
        "SELECT toString(event_id) AS id FROM usage_events"
        " WHERE org_id IN {orgs:Array(String)}"
        " AND started_at BETWEEN {lo:DateTime64(3, 'UTC')} AND {hi:DateTime64(3, 'UTC')}"
        " AND event_id IN {ids:Array(UUID)}",
        {
            "orgs": sorted({r["org_id"] for r in rows}),
            "lo": min(started),
            "hi": max(started),
            "ids": [r["event_id"] for r in rows],
        },
    )
    return {r["id"] for r in found}


async def write(store: Store, batch: PartitionBatch, *, check_existing: bool) -> int:
    """Insert one partition's rows; returns how many were inserted. Blocking until the store
    has acknowledged; raises ``StoreError`` otherwise (nothing may then be committed)."""
    rows = batch.rows
    if check_existing:
        present = await already_stored(store, rows)
        rows = [r for r in rows if r["event_id"] not in present]
    if rows:
        await store.insert("usage_events", rows, dedup_token=batch.dedup_token)
    return len(rows)
