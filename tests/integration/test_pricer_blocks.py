"""One insert per flush, over every partition the flush holds: recorded per partition, replayed
whole by whichever partition's next owner comes first, and never losing a partition while it is
being recorded. A real broker and a real engine, as in test_pricer_exactly_once."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from aiokafka import AIOKafkaProducer

from schemas.events import UsageEvent, encode_event
from services.common.broker import EmbeddedBroker
from services.pricer.catalog import Catalog
from services.pricer.pricing import price
from services.pricer.rows import to_row
from services.pricer.sink import PartitionBatch, apply, intents_from, record, write
from services.store.chdb_store import ChdbStore
from tests.integration.test_pricer_exactly_once import (
    assert_each_stored_once,
    make_events,
    new_topic,
    pricer_for,
    run_until_committed,
    totals,
)
from tests.support import PassThroughStore, await_until


async def _has(items: list[str], n: int) -> bool:
    return len(items) >= n


class Store(PassThroughStore):
    """The real store, with a look at what the pricer inserts: every insert into usage_events
    (its token), a hook run once, just before the first insert into ingest_batches goes in, and
    when that insert is done."""

    def __init__(self, store: ChdbStore) -> None:
        super().__init__(store)
        self.event_inserts: list[str | None] = []
        self.before_first_record: Any = None
        self.recorded = asyncio.Event()

    async def insert(self, table: str, rows: Any, *, dedup_token: str | None = None) -> None:
        if table == "usage_events":
            self.event_inserts.append(dedup_token)
        if table == "ingest_batches" and self.before_first_record is not None:
            hook, self.before_first_record = self.before_first_record, None
            await hook()
        await super().insert(table, rows, dedup_token=dedup_token)
        if table == "ingest_batches":
            self.recorded.set()


async def produce_to(bootstrap: str, topic: str, events: list[UsageEvent]) -> dict[int, list[tuple[int, UsageEvent]]]:
    """Each event to partition ``index % 3``; returns, per partition, ``(offset, event)`` in order."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        sent = [(e, await producer.send(topic, value=encode_event(e), partition=i % 3)) for i, e in enumerate(events)]
        placed: dict[int, list[tuple[int, UsageEvent]]] = {}
        for event, future in sent:
            md = await future
            placed.setdefault(md.partition, []).append((md.offset, event))
    finally:
        await producer.stop()
    return placed


def ends_of(placed: dict[int, list[tuple[int, UsageEvent]]]) -> dict[int, int]:
    return {p: entries[-1][0] + 1 for p, entries in placed.items()}


def batches_of(topic: str, placed: dict[int, list[tuple[int, UsageEvent]]]) -> list[PartitionBatch]:
    """What a pricer's flush of all of ``placed`` makes: a priced batch per partition."""
    return [
        PartitionBatch(topic, p, entries[0][0], entries[-1][0],
                       [to_row(price(e, Catalog()), 0, topic, p, offset) for offset, e in entries])
        for p, entries in sorted(placed.items())
    ]


async def records(store: ChdbStore, topic: str) -> dict[int, dict[str, Any]]:
    """The ingest_batches row of each partition of ``topic`` (each here has one first offset)."""
    rows = await store.select(
        "SELECT kafka_partition AS p, first_offset, dedup_token, block, length(event_ids) AS n FROM ingest_batches FINAL"
        " WHERE kafka_topic = {t:String} ORDER BY kafka_partition", {"t": topic})
    return {int(r["p"]): r for r in rows}


async def test_a_flush_over_three_partitions_is_one_insert_recorded_per_partition(
    store: ChdbStore, broker: EmbeddedBroker
) -> None:
    org = f"org-{uuid.uuid4().hex[:8]}"
    topic = await new_topic(broker)
    events = make_events(org, 300)
    placed = await produce_to(broker.bootstrap, topic, events)
    seen = Store(store)
    # the first batch closes on its 300th event, not on a timer: all three partitions are in it
    await run_until_committed(pricer_for(seen, broker, topic, batch=300, wait_s=30), ends_of(placed))  # type: ignore[arg-type]

    assert len(seen.event_inserts) == 1, seen.event_inserts
    recorded = await records(store, topic)
    assert sorted(recorded) == [0, 1, 2]
    assert {r["dedup_token"] for r in recorded.values()} == {seen.event_inserts[0]}
    assert all(r["block"] == [[0, 0], [1, 0], [2, 0]] for r in recorded.values()), recorded
    assert [int(recorded[p]["n"]) for p in (0, 1, 2)] == [100, 100, 100]
    await assert_each_stored_once(store, org, events)


async def test_an_insert_over_three_partitions_cut_short_is_replayed_whole_once(
    store: ChdbStore, broker: EmbeddedBroker
) -> None:
    """A dead pricer's insert of three partitions reached usage_events, not the key rollup. The
    next owner replays it whole: replayed by partition, the first replay would complete the
    rollup under the insert's token with a third of the rows, and ClickHouse drop the others."""
    org = f"org-{uuid.uuid4().hex[:8]}"
    topic = await new_topic(broker)
    events = make_events(org, 90)
    placed = await produce_to(broker.bootstrap, topic, events)
    insert = await record(store, batches_of(topic, placed))
    assert insert is not None and insert.partitions == {0, 1, 2}
    await store.execute("DETACH TABLE spend_daily_by_key_mv")
    try:
        await apply(store, insert)
    finally:
        await store.execute("ATTACH TABLE spend_daily_by_key_mv")
    cut = await totals(store, org)
    assert cut["raw_rows"] == 90 and cut["key_rollup_rows"] == 0
    (intent,) = await intents_from(store, topic, 1, 0)
    assert [(s.partition, len(s.event_ids)) for s in intent.slices] == [(0, 30), (1, 30), (2, 30)]

    seen = Store(store)
    await run_until_committed(pricer_for(seen, broker, topic), ends_of(placed))  # type: ignore[arg-type]

    await assert_each_stored_once(store, org, events)
    # one pricer recovering the three partitions replays the insert once, not once per partition
    assert seen.event_inserts.count(insert.dedup_token) == 1, seen.event_inserts


async def test_a_partition_is_not_lost_while_its_insert_is_being_recorded(
    store: ChdbStore, broker: EmbeddedBroker
) -> None:
    """A rebalance takes partition 2 while the pricer records its flush's insert. Lost then, its
    new owner could recover it before the record existed, find nothing to replay, and store its
    events itself, and the insert store them a second time. So the revoke waits for the record:
    the new owner comes after it, the insert holds partition 2 and is applied whole, 0 and 1 are
    committed, and the next owner of 2 replays the same insert (a no-op under its token)."""
    org = f"org-{uuid.uuid4().hex[:8]}"
    topic = await new_topic(broker)
    events = make_events(org, 90)
    placed = await produce_to(broker.bootstrap, topic, events)
    seen = Store(store)
    pricer = pricer_for(seen, broker, topic, batch=90, wait_s=30)  # type: ignore[arg-type]
    (lost,) = (b for b in batches_of(topic, placed) if b.partition == 2)
    order: list[str] = []

    async def new_owner() -> None:
        await pricer.on_revoked({2})  # what aiokafka's coordinator calls; the rebalance waits for it
        if seen.recorded.is_set():
            order.append("revoked after the record")  # the new owner will find it and replay it
        else:
            order.append("revoked before the record")
            await write(store, lost)  # the new owner found nothing to replay: stores them itself

    async def rebalance() -> None:
        # the coordinator's task, not the flush's: it runs while the record is being made
        order.append(asyncio.create_task(new_owner()).get_name())

    seen.before_first_record = rebalance
    await run_until_committed(pricer, {p: end for p, end in ends_of(placed).items() if p != 2})
    await await_until(lambda: _has(order, 2), what="the revoke done")

    assert order[1:] == ["revoked after the record"]
    assert 2 not in pricer.partitions and set(pricer.committed) == {0, 1}
    (applied,) = seen.event_inserts
    recorded = await records(store, topic)
    assert {r["dedup_token"] for r in recorded.values()} == {applied}
    assert recorded[2]["block"] == [[0, 0], [1, 0], [2, 0]]
    await assert_each_stored_once(store, org, events)
    # its next owner replays the insert (stored already: nothing is written) and commits
    await run_until_committed(pricer_for(store, broker, topic), {2: ends_of(placed)[2]})
    await assert_each_stored_once(store, org, events)


async def test_a_record_made_before_blocks_is_an_insert_of_its_partition_alone(store: ChdbStore) -> None:
    """Rows of ingest_batches written before migration 0008 have no block: each is replayed as
    the insert of its own partition, as it was made."""
    topic = f"t-{uuid.uuid4().hex[:10]}"
    ids = [str(uuid.uuid4()) for _ in range(3)]
    await store.insert("ingest_batches", [{"kafka_topic": topic, "kafka_partition": 4, "first_offset": 7,
                                           "last_offset": 9, "dedup_token": "old", "event_ids": ids}])
    (intent,) = await intents_from(store, topic, 4, 0)
    assert intent.dedup_token == "old"
    assert [(s.partition, s.first_offset, s.last_offset, s.event_ids) for s in intent.slices] == [(4, 7, 9, frozenset(ids))]



async def test_a_slice_recorded_again_since_is_left_out_of_the_insert(store: ChdbStore) -> None:
    """Partition 1's next owner replayed an insert over partitions 0 and 1, then read 1 again from
    the same offset and recorded its own insert of it: that row replaces the first insert's row of
    partition 1. The first insert, found again through partition 0, is then partition 0's alone
    (complete already: its replay writes nothing); the other row is another insert's."""
    org = f"org-{uuid.uuid4().hex[:8]}"
    topic = f"t-{uuid.uuid4().hex[:10]}"
    events = make_events(org, 20)
    placed = {p: [(i // 2, e) for i, e in enumerate(events) if i % 2 == p] for p in (0, 1)}
    first = await record(store, batches_of(topic, placed))
    assert first is not None and first.partitions == {0, 1}
    later = [str(uuid.uuid4())]
    await store.insert("ingest_batches", [{"kafka_topic": topic, "kafka_partition": 1, "first_offset": 0,
                                           "last_offset": 9, "dedup_token": "later", "event_ids": later}])
    (intent,) = await intents_from(store, topic, 0, 0)
    assert intent.dedup_token == first.dedup_token
    assert [(s.partition, len(s.event_ids)) for s in intent.slices] == [(0, 10)]
    (other,) = await intents_from(store, topic, 1, 0)
    assert (other.dedup_token, [s.event_ids for s in other.slices]) == ("later", [frozenset(later)])
