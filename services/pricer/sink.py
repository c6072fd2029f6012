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
  each insert is first recorded in ``ingest_batches`` (per partition: offsets, token, ids); the
  next owner of a partition replays the inserts recorded from its committed offset on with the
  same token, and ClickHouse writes exactly what is missing. For the same reason a failed insert
  is retried as recorded (``record`` once, then ``apply`` until it succeeds), never filtered
  again: the failure may have come after the table took the rows and before every view did.

One insert holds a flush's rows of every partition (an insert's fixed cost in ClickHouse is tens
of milliseconds: per partition, it was most of the store's work at a pricer's batch sizes). Its
rows in ``ingest_batches`` share its token and each lists the others (``block``), so whichever
partition's next owner comes first replays the insert whole: a replay of one partition's rows
under the block's token would complete a view that missed the insert with part of it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any


from services.pricer.rows import UsageRow
from services.store import Store
from services.store.base import ID_TABLE


@dataclass(frozen=True)
class PartitionBatch:
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    rows: list[UsageRow]


def block_token(batches: Sequence[PartitionBatch]) -> str:
    """The deduplication token of one insert of ``batches`` (one topic, in partition order): their
    offset ranges, and a digest of their event ids that keeps tokens unique when a topic is
    recreated and its offsets start again from zero (the embedded broker keeps topics in memory
    only). For one partition: ``topic:partition:first-last:digest``."""
    digest = hashlib.blake2b(digest_size=8)
    for batch in batches:
        digest.update("".join([row.event_id for row in batch.rows]).encode())
    ranges = "+".join(f"{b.partition}:{b.first_offset}-{b.last_offset}" for b in batches)
    return f"{batches[0].topic}:{ranges}:{digest.hexdigest()}"


async def already_stored(store: Store, rows: Sequence[UsageRow]) -> set[str]:
    """Event ids among ``rows`` that the store holds already. Bounded by the batch's organisations
    and time range so it reads a few granules, not the table."""
    if not rows:
        return set()
    started: list[datetime] = [r.started_at for r in rows]
    found = await store.select_with_ids(
        "SELECT toString(event_id) AS id FROM usage_events"
        " WHERE org_id IN {orgs:Array(String)}"
        " AND started_at BETWEEN {lo:DateTime64(3, 'UTC')} AND {hi:DateTime64(3, 'UTC')}"
        f" AND event_id IN (SELECT id FROM {ID_TABLE})",
        {"orgs": sorted({r.org_id for r in rows}), "lo": min(started), "hi": max(started)},
        [r.event_id for r in rows],
    )
    return {r["id"] for r in found}


@dataclass(frozen=True)
class Slice:
    """One partition's part of a recorded insert."""

    partition: int
    first_offset: int
    last_offset: int
    event_ids: frozenset[str]


@dataclass(frozen=True)
class Intent:
    """A recorded insert: what to replay, whole, if it may have been cut short."""

    dedup_token: str
    slices: tuple[Slice, ...]  # in partition order, as the insert held them


@dataclass(frozen=True)
class RecordedInsert:
    """An insert recorded in ``ingest_batches`` and not yet known to be applied."""

    rows: list[UsageRow]
    dedup_token: str
    partitions: frozenset[int]


async def record(store: Store, batches: Sequence[PartitionBatch]) -> RecordedInsert | None:
    """Choose the rows of ``batches`` (one topic, partition order) not yet stored, and record one
    insert of them; ``None`` when there are none. Duplicates within the batches are dropped, the
    first copy kept. One read of the stored ids and one insert of the records, whatever the
    number of partitions. Raises ``StoreError`` (then nothing is recorded, and it may be called
    again)."""
    seen: set[str] = set()
    unique: list[tuple[PartitionBatch, list[UsageRow]]] = []
    for batch in batches:
        rows = []
        for row in batch.rows:
            if row.event_id not in seen:
                seen.add(row.event_id)
                rows.append(row)
        unique.append((batch, rows))
    present = await already_stored(store, [r for _, rows in unique for r in rows])
    chosen = [(b, new) for b, rows in unique if (new := [r for r in rows if r.event_id not in present])]
    if not chosen:
        return None
    token = block_token([b for b, _ in chosen])
    block = [[b.partition, b.first_offset] for b, _ in chosen]
    await store.insert("ingest_batches", [  # one block: every record of the insert, or none
        {"kafka_topic": b.topic, "kafka_partition": b.partition, "first_offset": b.first_offset,
         "last_offset": b.last_offset, "dedup_token": token, "event_ids": [r.event_id for r in rows], "block": block}
        for b, rows in chosen
    ])
    return RecordedInsert([r for _, rows in chosen for r in rows], token, frozenset(b.partition for b, _ in chosen))


async def apply(store: Store, insert: RecordedInsert) -> None:
    """Run a recorded insert. Idempotent: a retry after a failure, whatever part of it the store
    applied, writes exactly the rest, in the table and in every view."""
    await store.insert("usage_events", insert.rows, dedup_token=insert.dedup_token)


async def write(store: Store, batch: PartitionBatch) -> int:
    """Insert one partition's new rows; returns how many were inserted. Blocking until the store
    has acknowledged; raises ``StoreError`` otherwise (nothing may then be committed, and a retry
    must ``apply`` the recorded insert rather than call this again: see the module docstring)."""
    insert = await record(store, [batch])
    if insert is None:
        return 0
    await apply(store, insert)
    return len(insert.rows)


_INTENT_COLUMNS = (
    "kafka_partition AS partition, first_offset, last_offset, dedup_token, block,"
    " arrayMap(x -> toString(x), event_ids) AS ids"
)


def _slice(row: dict[str, Any]) -> Slice:
    return Slice(int(row["partition"]), int(row["first_offset"]), int(row["last_offset"]), frozenset(row["ids"]))


async def intents_from(store: Store, topic: str, partition: int, offset: int) -> list[Intent]:
    """Recorded inserts holding a partition's messages at or after ``offset`` (the committed
    one): the only ones a previous owner can have left unfinished. Oldest first, each with its
    slices of the other partitions it held. A slice recorded again since (a later insert from the
    same offset, by the partition's next owner, once its recovery had replayed this one) is no
    longer this insert's, and is left out: the insert is complete already."""
    own = await store.select(
        f"SELECT {_INTENT_COLUMNS} FROM ingest_batches FINAL"
        " WHERE kafka_topic = {topic:String} AND kafka_partition = {p:UInt32} AND first_offset >= {o:UInt64}"
        " ORDER BY first_offset",
        {"topic": topic, "p": partition, "o": offset},
    )
    others = {(int(p), int(first)) for r in own for p, first in r["block"] if int(p) != partition}
    siblings: dict[tuple[str, int], Slice] = {}
    if others:
        # by primary key only: a filter on the token could pick a row that FINAL has replaced
        found = await store.select(
            f"SELECT {_INTENT_COLUMNS} FROM ingest_batches FINAL WHERE kafka_topic = {{topic:String}}"
            " AND kafka_partition IN {ps:Array(UInt32)} AND first_offset IN {fs:Array(UInt64)}",
            {"topic": topic, "ps": sorted({p for p, _ in others}), "fs": sorted({f for _, f in others})},
        )
        siblings = {(r["dedup_token"], int(r["partition"])): _slice(r) for r in found
                    if (int(r["partition"]), int(r["first_offset"])) in others}
    intents = []
    for r in own:
        token, mine = r["dedup_token"], _slice(r)
        slices = [mine if int(p) == partition else siblings.get((token, int(p))) for p, _ in r["block"]] or [mine]
        intents.append(Intent(token, tuple(s for s in slices if s is not None)))
    return intents


async def replay(store: Store, intent: Intent, rows: Mapping[int, Sequence[UsageRow]]) -> int:
    """Re-run a recorded insert whole: the rows of each of its slices (``rows``: per partition,
    what its offset range holds now) that it held, in its order, with its token. Where the first
    run completed this writes nothing; where it was cut short, it writes the rest."""
    selected = [r for s in intent.slices for r in rows.get(s.partition, ()) if r.event_id in s.event_ids]
    if selected:
        await store.insert("usage_events", selected, dedup_token=intent.dedup_token)
    return len(selected)
