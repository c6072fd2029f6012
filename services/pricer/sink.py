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
- **An insert cut short is replayed whole.** ClickHouse writes a table and its materialized
  views one after the other, so a pricer killed mid-insert can leave an event in
  ``usage_events`` but not in every rollup, and the first rule would then skip it for good. So
  each insert is first recorded in ``ingest_batches`` (offsets, token, ids); the next owner of
  the partition replays recorded batches from its committed offset on with the same token, and
  ClickHouse writes exactly what is missing. For the same reason a failed insert is retried as
  recorded (``record`` once, then ``apply`` until it succeeds), never filtered again: the failure
  may have come after the table took the rows and before every view did.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime


from services.pricer.rows import UsageRow
from services.store import Store


@dataclass(frozen=True)
class PartitionBatch:
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    rows: list[UsageRow]

    @property
    def dedup_token(self) -> str:
        # The digest of the event ids keeps tokens unique when a topic is recreated and its
        # offsets start again from zero (the embedded broker keeps topics in memory only).
        digest = hashlib.blake2b("".join([row.event_id for row in self.rows]).encode(), digest_size=8)
        return f"{self.topic}:{self.partition}:{self.first_offset}-{self.last_offset}:{digest.hexdigest()}"


async def already_stored(store: Store, rows: Sequence[UsageRow]) -> set[str]:
    """Event ids among ``rows`` that the store holds already. Bounded by the batch's organisations
    and time range so it reads a few granules, not the table."""
    if not rows:
        return set()
    started: list[datetime] = [r.started_at for r in rows]
    found = await store.select(
        "SELECT toString(event_id) AS id FROM usage_events"
        " WHERE org_id IN {orgs:Array(String)}"
        " AND started_at BETWEEN {lo:DateTime64(3, 'UTC')} AND {hi:DateTime64(3, 'UTC')}"
        " AND event_id IN {ids:Array(UUID)}",
        {
            "orgs": sorted({r.org_id for r in rows}),
            "lo": min(started),
            "hi": max(started),
            "ids": [r.event_id for r in rows],
        },
    )
    return {r["id"] for r in found}


@dataclass(frozen=True)
class Intent:
    """A recorded insert: what to replay if it may have been cut short."""

    first_offset: int
    last_offset: int
    dedup_token: str
    event_ids: frozenset[str]


@dataclass(frozen=True)
class RecordedInsert:
    """An insert recorded in ``ingest_batches`` and not yet known to be applied."""

    rows: list[UsageRow]
    dedup_token: str


async def record(store: Store, batches: Sequence[PartitionBatch]) -> dict[int, RecordedInsert | None]:
    """For each partition's batch, choose its rows not yet stored and record the insert of them;
    ``None`` for a batch with none. One read of the stored ids and one insert of the records for
    all the batches of a flush: per batch, those two fixed costs were a tenth of the pricer's
    time. Raises ``StoreError`` (then nothing is recorded, and it may be called again)."""
    unique = {b.partition: list({r.event_id: r for r in reversed(b.rows)}.values())[::-1] for b in batches}  # first copy wins
    present = await already_stored(store, [r for rows in unique.values() for r in rows])
    recorded: dict[int, RecordedInsert | None] = {}
    intents = []
    for batch in batches:
        rows = [r for r in unique[batch.partition] if r.event_id not in present]
        if not rows:
            recorded[batch.partition] = None
            continue
        token = batch.dedup_token
        intents.append({
            "kafka_topic": batch.topic, "kafka_partition": batch.partition, "first_offset": batch.first_offset,
            "last_offset": batch.last_offset, "dedup_token": token, "event_ids": [r.event_id for r in rows],
        })
        recorded[batch.partition] = RecordedInsert(rows, token)
    if intents:
        await store.insert("ingest_batches", intents)  # one block: every record of the flush, or none
    return recorded


async def apply(store: Store, insert: RecordedInsert) -> None:
    """Run a recorded insert. Idempotent: a retry after a failure, whatever part of it the store
    applied, writes exactly the rest, in the table and in every view."""
    await store.insert("usage_events", insert.rows, dedup_token=insert.dedup_token)


async def write(store: Store, batch: PartitionBatch) -> int:
    """Insert one partition's new rows; returns how many were inserted. Blocking until the store
    has acknowledged; raises ``StoreError`` otherwise (nothing may then be committed, and a retry
    must ``apply`` the recorded insert rather than call this again: see the module docstring)."""
    insert = (await record(store, [batch]))[batch.partition]
    if insert is None:
        return 0
    await apply(store, insert)
    return len(insert.rows)


async def intents_from(store: Store, topic: str, partition: int, offset: int) -> list[Intent]:
    """Recorded inserts of a partition at or after ``offset`` (the committed one): the only ones a
    previous owner can have left unfinished. Oldest first."""
    rows = await store.select(
        "SELECT first_offset, last_offset, dedup_token, arrayMap(x -> toString(x), event_ids) AS ids"
        " FROM ingest_batches FINAL"
        " WHERE kafka_topic = {topic:String} AND kafka_partition = {p:UInt32} AND first_offset >= {o:UInt64}"
        " ORDER BY first_offset",
        {"topic": topic, "p": partition, "o": offset},
    )
    return [Intent(int(r["first_offset"]), int(r["last_offset"]), r["dedup_token"], frozenset(r["ids"])) for r in rows]


async def replay(store: Store, intent: Intent, rows: Sequence[UsageRow]) -> int:
    """Re-run a recorded insert: the rows of its offset range that it held, with its token. Where
    the first run completed this writes nothing; where it was cut short, it writes the rest."""
    selected = [r for r in rows if r.event_id in intent.event_ids]
    if selected:
        await store.insert("usage_events", selected, dedup_token=intent.dedup_token)
    return len(selected)
