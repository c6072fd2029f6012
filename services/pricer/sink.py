"""Writes priced rows so that each event is stored exactly once.

Delivery into the topic is at least once: the gateway may publish an event twice (a spool
replay after a broker outage, a producer retry), and a pricer that dies between its insert and
its offset commit leaves messages that the next owner of the partition reads again, in batches
of another shape. Two mechanisms make the store exactly once:
- **Event ids already stored are dropped** before every insert (and duplicates within the
  batch), so neither a resend nor a re-read is stored twice, in the raw table or in a rollup.
- **A retried insert carries the same deduplication token** (topic, partition, offset range and
  a digest of its ids), so when the store did apply an insert whose acknowledgement was lost,
  ClickHouse drops the retry in ``usage_events`` and in every materialized view it feeds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
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


async def write(store: Store, batch: PartitionBatch) -> int:
    """Insert one partition's new rows; returns how many were inserted. Blocking until the store
    has acknowledged; raises ``StoreError`` otherwise (nothing may then be committed)."""
    unique = list({r["event_id"]: r for r in reversed(batch.rows)}.values())[::-1]  # first copy wins
    present = await already_stored(store, unique)
    rows = [r for r in unique if r["event_id"] not in present]
    if rows:
        await store.insert("usage_events", rows, dedup_token=batch.dedup_token)
    return len(rows)
