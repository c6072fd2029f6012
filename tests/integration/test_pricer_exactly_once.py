"""The pricer over a real broker and a real engine: every message stored exactly once, in the
raw table and in every rollup, whatever happened to the pricer before."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from schemas.events import UsageEvent, encode_event
from services.common.broker import EmbeddedBroker
from services.common.kafka import ensure_topics
from services.common.settings import KafkaSettings, load_settings
from services.pricer.catalog import Catalog
from services.pricer import consumer
from services.pricer.consumer import Pricer
from services.pricer.dlq import PoisonBreakerTripped
from services.pricer.pricing import price
from services.pricer.rows import to_row
from services.pricer.sink import PartitionBatch, block_token, write
from services.store.chdb_store import ChdbStore
from tests.support import PassThroughStore, await_until

BASE = datetime(2026, 3, 14, 9, 0, tzinfo=timezone.utc)
OUTAGE_S = float(os.environ.get("METERLINE_TEST_STORE_OUTAGE_S", "5"))  # 30 for the full fault run


def make_events(org: str, n: int) -> list[UsageEvent]:
    return [
        UsageEvent(
            event_id=str(uuid.uuid4()), request_id=f"req-{i}", org_id=org, team_id="team-a", key_id="key-a",
            provider="openai", route="chat/completions", model="gpt-4o-2024-08-06", model_requested="gpt-4o",
            started_at=BASE + timedelta(seconds=i), input_tokens=1_000 + i, output_tokens=10 + i % 7,
            cache_read_tokens=(i % 3) * 100, prompt_key="p" if i % 2 else "",
        )
        for i in range(n)
    ]


def expected_total(events: list[UsageEvent]) -> Decimal:
    return sum((price(e, Catalog()).cost.total for e in events), Decimal(0))


async def totals(store: ChdbStore, org: str) -> dict[str, Decimal | int]:
    raw = (await store.select(
        "SELECT count() AS n, uniqExact(event_id) AS ids, sum(total_cost) AS cost FROM usage_events WHERE org_id = {o:String}",
        {"o": org},
    ))[0]
    by_key = (await store.select(
        "SELECT sum(request_count) AS n, sum(total_cost) AS cost FROM spend_daily_by_key WHERE org_id = {o:String}", {"o": org}
    ))[0]
    by_prompt = (await store.select(
        "SELECT sum(request_count) AS n, sum(total_cost) AS cost FROM spend_daily_by_prompt WHERE org_id = {o:String}", {"o": org}
    ))[0]
    return {
        "raw_rows": int(raw["n"]), "raw_ids": int(raw["ids"]), "raw_cost": Decimal(raw["cost"]),
        "key_rollup_rows": int(by_key["n"] or 0), "key_rollup_cost": Decimal(by_key["cost"] or 0),
        "prompt_rollup_rows": int(by_prompt["n"] or 0), "prompt_rollup_cost": Decimal(by_prompt["cost"] or 0),
    }


async def assert_each_stored_once(store: ChdbStore, org: str, events: list[UsageEvent]) -> None:
    """Every event in usage_events once, at its exact cost, and in the key and prompt rollups."""
    t = await totals(store, org)
    n, cost = len(events), expected_total(events)
    assert t["raw_rows"] == n and t["raw_ids"] == n and t["raw_cost"] == cost
    assert t["key_rollup_rows"] == n and t["key_rollup_cost"] == cost
    assert t["prompt_rollup_rows"] == sum(1 for e in events if e.prompt_key)


async def produce(bootstrap: str, topic: str, payloads: list[tuple[bytes, bytes]]) -> dict[int, int]:
    """Returns the end offset per partition."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        futures = [await producer.send(topic, key=k, value=v) for k, v in payloads]
        results = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    ends: dict[int, int] = {}
    for md in results:
        ends[md.partition] = max(ends.get(md.partition, 0), md.offset + 1)
    return ends


def pricer_for(store: ChdbStore, broker: EmbeddedBroker, topic: str, batch: int = 64, wait_s: float = 0.2) -> Pricer:
    settings = load_settings({"METERLINE_BATCH_MAX_EVENTS": str(batch), "METERLINE_BATCH_MAX_WAIT": str(wait_s),
                              "METERLINE_DLQ_BREAKER_WINDOW": "50", "METERLINE_PRICER_GROUP": f"g-{topic}",
                              "METERLINE_PRICER_SESSION_TIMEOUT_MS": "3000"})
    kafka = KafkaSettings(bootstrap=broker.bootstrap, raw_topic=topic, dlq_topic=f"{topic}.dlq", partitions=3)
    return Pricer(store, kafka, settings.pricer, broker.bootstrap)


@contextlib.asynccontextmanager
async def running(pricer: Pricer) -> AsyncIterator[asyncio.Task[None]]:
    """The pricer started and consuming; on the way out stopped (what it holds is flushed), its
    run awaited (so a failure in it fails the test) and closed."""
    await pricer.start()
    task = asyncio.create_task(pricer.run())
    try:
        yield task
    finally:
        pricer.stop()
        await task
        await pricer.close()


async def run_until_committed(pricer: Pricer, ends: dict[int, int]) -> None:
    async with running(pricer) as task:
        await await_until(
            lambda: _done(pricer, ends, task), timeout_s=30, what=f"offsets {ends} committed (have {pricer.committed})"
        )


async def _done(pricer: Pricer, ends: dict[int, int], task: asyncio.Task) -> bool:
    if task.done():
        task.result()
    return all(pricer.committed.get(p, 0) >= end for p, end in ends.items())


async def new_topic(broker: EmbeddedBroker) -> str:
    topic = f"t-{uuid.uuid4().hex[:10]}"
    await ensure_topics(broker.bootstrap, {topic: 3, f"{topic}.dlq": 1})
    return topic


async def test_same_batch_written_twice_counts_once_everywhere(store: ChdbStore) -> None:
    org = f"org-{uuid.uuid4().hex[:8]}"
    events = make_events(org, 40)
    rows = [to_row(price(e, Catalog()), 0, "topic-x", 0, i) for i, e in enumerate(events)]
    batch = PartitionBatch("topic-x", 0, 0, 39, rows)
    assert await write(store, batch) == 40
    assert await write(store, batch) == 0  # the pricer's retry: every id is already stored
    # The store applied an insert but its acknowledgement was lost, and the retry raced past the
    # id check: the token alone must make it a no-op, in the table and in every rollup.
    await store.insert("usage_events", rows, dedup_token=block_token([batch]))
    t = await totals(store, org)
    cost = expected_total(events)
    assert t == {**t, "raw_rows": 40, "raw_ids": 40, "raw_cost": cost, "key_rollup_rows": 40, "key_rollup_cost": cost}
    assert t["prompt_rollup_rows"] == 20


async def test_crash_between_insert_and_commit_is_not_counted_twice(store: ChdbStore, broker: EmbeddedBroker) -> None:
    """A pricer wrote a batch and died before committing. The next one re-reads those messages
    in different batch shapes, and must store each event once, in every table."""
    org = f"org-{uuid.uuid4().hex[:8]}"
    topic = await new_topic(broker)
    events = make_events(org, 500)
    # One partition keeps the dead pricer's offsets easy to state; the key decides it.
    ends = await produce(broker.bootstrap, topic, [(org.encode(), encode_event(e)) for e in events])
    (partition,) = ends
    # What the dead pricer managed: offsets 0..199 stored, nothing committed.
    dead_rows = [to_row(price(e, Catalog()), 0, topic, partition, i) for i, e in enumerate(events[:200])]
    await write(store, PartitionBatch(topic, partition, 0, 199, dead_rows))

    await run_until_committed(pricer_for(store, broker, topic, batch=64), ends)

    await assert_each_stored_once(store, org, events)


async def cut_insert(store: ChdbStore, topic: str, partition: int, events: list[UsageEvent]) -> PartitionBatch:
    """A dead pricer's insert that reached usage_events and the prompt rollup, not the key rollup:
    the key rollup's view is missing while it runs (ClickHouse writes views one after another)."""
    rows = [to_row(price(e, Catalog()), 0, topic, partition, i) for i, e in enumerate(events)]
    batch = PartitionBatch(topic, partition, 0, len(events) - 1, rows)
    await store.execute("DETACH TABLE spend_daily_by_key_mv")
    try:
        await write(store, batch)
    finally:
        await store.execute("ATTACH TABLE spend_daily_by_key_mv")
    return batch


async def test_an_insert_cut_short_between_table_and_rollups_is_completed(store: ChdbStore, broker: EmbeddedBroker) -> None:
    """A pricer killed mid-insert: the rows reached usage_events and one rollup but not the other
    (ClickHouse writes views one after another). The next owner replays the recorded insert."""
    org = f"org-{uuid.uuid4().hex[:8]}"
    topic = await new_topic(broker)
    events = make_events(org, 50)
    ends = await produce(broker.bootstrap, topic, [(org.encode(), encode_event(e)) for e in events])
    (partition,) = ends
    await cut_insert(store, topic, partition, events[:30])
    cut = await totals(store, org)
    assert cut["raw_rows"] == 30 and cut["key_rollup_rows"] == 0 and cut["prompt_rollup_rows"] == 15

    await run_until_committed(pricer_for(store, broker, topic), ends)

    await assert_each_stored_once(store, org, events)


class HeldReplays(PassThroughStore):
    """The real store, except that re-running one of the given recorded inserts never finishes:
    the fault is a pricer that dies while it replays (a slow store, then SIGKILL)."""

    def __init__(self, store: ChdbStore, tokens: set[str]) -> None:
        super().__init__(store)
        self._tokens = tokens
        self.entered = asyncio.Event()

    async def insert(self, table: str, rows: Any, *, dedup_token: str | None = None) -> None:
        if table == "usage_events" and dedup_token in self._tokens:
            self.entered.set()
            await asyncio.Event().wait()
        await super().insert(table, rows, dedup_token=dedup_token)


async def test_a_pricer_that_dies_while_recovering_leaves_the_recovery_to_the_next(
    store: ChdbStore, broker: EmbeddedBroker
) -> None:
    """aiokafka hands a new owner its partition's records while on_partitions_assigned still runs.
    A pricer that consumed and committed them during its replay of a cut insert, then died, moved
    the committed offset past that insert and hid it from every later owner: the rollups missed
    its rows for good. Nothing may be committed before the partition is recovered."""
    org = f"org-{uuid.uuid4().hex[:8]}"
    topic = await new_topic(broker)
    events = make_events(org, 50)
    ends = await produce(broker.bootstrap, topic, [(org.encode(), encode_event(e)) for e in events])
    (partition,) = ends
    batch = await cut_insert(store, topic, partition, events[:30])

    held = HeldReplays(store, {block_token([batch])})
    dying = pricer_for(held, broker, topic)  # type: ignore[arg-type]
    await dying.start()
    task = asyncio.create_task(dying.run())
    await asyncio.wait_for(held.entered.wait(), 30)
    # The fault's timing: it dies 1 s into its replay, long after a pricer that consumes while it
    # recovers would have stored and committed the partition (batches close every 200 ms).
    await asyncio.sleep(1.0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert dying.committed == {}, "offsets committed before the partition was recovered"
    await asyncio.wait_for(dying.close(), 30)

    await run_until_committed(pricer_for(store, broker, topic), ends)
    await assert_each_stored_once(store, org, events)


async def test_an_insert_that_failed_half_applied_is_retried_whole(store: ChdbStore, broker: EmbeddedBroker) -> None:
    """An insert fails after usage_events took the rows and before a view did (here a rollup
    rejects them; on a server, also a timeout). The retry must re-run the recorded insert, not
    filter out the rows now present: that would leave the rollup short and commit anyway."""
    org = f"org-{uuid.uuid4().hex[:8]}"
    topic = await new_topic(broker)
    events = make_events(org, 40)
    pricer = pricer_for(store, broker, topic)
    await store.execute("ALTER TABLE spend_daily_by_key ADD CONSTRAINT fault CHECK org_id != {o:String}", {"o": org})
    ends = await produce(broker.bootstrap, topic, [(org.encode(), encode_event(e)) for e in events])
    async with running(pricer) as task:
        try:
            async def half_applied() -> bool:
                assert not task.done(), "the pricer died on a failed insert"
                return (await totals(store, org))["raw_rows"] == 40

            await await_until(half_applied, what="the rows in usage_events while the key rollup refuses them")
            cut = await totals(store, org)
            assert cut["key_rollup_rows"] == 0 and pricer.committed == {}
        finally:
            await store.execute("ALTER TABLE spend_daily_by_key DROP CONSTRAINT fault")
        await await_until(lambda: _done(pricer, ends, task), timeout_s=30, what="the retried insert committed")
    await assert_each_stored_once(store, org, events)


async def test_an_event_published_twice_is_stored_once(store: ChdbStore, broker: EmbeddedBroker) -> None:
    """The gateway replays its spool after a broker outage, or a producer retries: the same
    event_id arrives at two offsets, even in two batches."""
    org = f"org-{uuid.uuid4().hex[:8]}"
    topic = await new_topic(broker)
    events = make_events(org, 60)
    twice = events + events[10:30] + events[:5]
    ends = await produce(broker.bootstrap, topic, [(org.encode(), encode_event(e)) for e in twice])
    await run_until_committed(pricer_for(store, broker, topic, batch=16), ends)
    t = await totals(store, org)
    assert t["raw_rows"] == 60 and t["key_rollup_rows"] == 60 and t["key_rollup_cost"] == expected_total(events)


async def test_restarted_pricer_resumes_from_commits(store: ChdbStore, broker: EmbeddedBroker) -> None:
    org = f"org-{uuid.uuid4().hex[:8]}"
    topic = await new_topic(broker)
    first, second = make_events(org, 120), make_events(org, 80)
    ends = await produce(broker.bootstrap, topic, [(org.encode(), encode_event(e)) for e in first])
    await run_until_committed(pricer_for(store, broker, topic), ends)
    ends = await produce(broker.bootstrap, topic, [(org.encode(), encode_event(e)) for e in second])
    await run_until_committed(pricer_for(store, broker, topic), ends)
    t = await totals(store, org)
    assert t["raw_rows"] == 200 and t["key_rollup_rows"] == 200
    assert t["key_rollup_cost"] == expected_total(first + second)


async def test_poison_goes_to_the_dead_letter_topic_with_its_reason(store: ChdbStore, broker: EmbeddedBroker) -> None:
    org = f"org-{uuid.uuid4().hex[:8]}"
    topic = await new_topic(broker)
    events = make_events(org, 30)
    poison = [b"{not json", b'{"schema_version": 99, "event_id": "x"}', b""]
    payloads = [(org.encode(), encode_event(e)) for e in events[:15]] + [(org.encode(), p) for p in poison]
    payloads += [(org.encode(), encode_event(e)) for e in events[15:]]
    ends = await produce(broker.bootstrap, topic, payloads)
    await run_until_committed(pricer_for(store, broker, topic), ends)
    assert (await totals(store, org))["raw_rows"] == 30

    consumer = AIOKafkaConsumer(f"{topic}.dlq", bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        seen: list = []

        async def all_dead_lettered() -> bool:
            batch = await consumer.getmany(timeout_ms=200)
            seen.extend(m for ms in batch.values() for m in ms)
            return len(seen) >= 3

        await await_until(all_dead_lettered, what="3 dead-lettered messages")
    finally:
        await consumer.stop()
    reasons = sorted(dict(m.headers)["reason"].decode() for m in seen)
    assert [m.value for m in seen] == poison
    assert any("undecodable" in r for r in reasons) and any("schema version 99" in r for r in reasons)
    assert any("empty" in r for r in reasons)


async def test_breaker_stops_the_pricer_when_most_events_are_poison(store: ChdbStore, broker: EmbeddedBroker) -> None:
    topic = await new_topic(broker)
    await produce(broker.bootstrap, topic, [(b"k", b"garbage %d" % i) for i in range(100)])
    pricer = pricer_for(store, broker, topic)
    await pricer.start()
    try:
        task = asyncio.create_task(pricer.run())
        done, _ = await asyncio.wait([task], timeout=30)
        assert done, "the breaker did not stop the pricer"
        assert isinstance(task.exception(), PoisonBreakerTripped)
        assert pricer.committed == {}  # nothing was committed: the topic was not emptied into the DLQ
    finally:
        await pricer.close()


async def test_store_outage_is_waited_out_without_committing(store: ChdbStore, broker: EmbeddedBroker) -> None:
    """The events table goes away (detached) while events flow: the pricer retries with backoff,
    commits nothing it has not written, does not die, and catches up when the table is back."""
    org = f"org-{uuid.uuid4().hex[:8]}"
    topic = await new_topic(broker)
    first, during = make_events(org, 20), make_events(org, 60)
    pricer = pricer_for(store, broker, topic)
    ends = await produce(broker.bootstrap, topic, [(org.encode(), encode_event(e)) for e in first])
    async with running(pricer) as task:
        await await_until(lambda: _done(pricer, ends, task), what="first events committed")
        committed_before = dict(pricer.committed)
        await store.execute("DETACH TABLE usage_events")
        try:
            ends = await produce(broker.bootstrap, topic, [(org.encode(), encode_event(e)) for e in during])
            # Outage length is the point of the test: hold it, checking the pricer all along.
            deadline = asyncio.get_running_loop().time() + OUTAGE_S
            while asyncio.get_running_loop().time() < deadline:
                assert not task.done(), "the pricer died during the outage"
                assert pricer.committed == committed_before, "offsets committed for rows not written"
                await asyncio.sleep(0.1)
        finally:
            await store.execute("ATTACH TABLE usage_events")
        await await_until(lambda: _done(pricer, ends, task), timeout_s=30, what="catch-up after the outage")
    t = await totals(store, org)
    assert t["raw_rows"] == 80 and t["key_rollup_rows"] == 80 and t["key_rollup_cost"] == expected_total(first + during)


async def test_a_rebalance_during_a_store_outage_loses_nothing(store: ChdbStore, broker: EmbeddedBroker) -> None:
    """While the store is down the pricer polls paused, to stay in its group. A member joining and
    leaving meanwhile brings it new assignments, which start unpaused: what they hand out must be
    put back, not skipped, or a later commit passes over events that were never stored."""
    org = f"org-{uuid.uuid4().hex[:8]}"
    topic = await new_topic(broker)
    first, during = make_events(org, 30), make_events(org, 90)
    pricer = pricer_for(store, broker, topic)

    def spread(events: list[UsageEvent]) -> list[tuple[bytes, bytes]]:
        return [(e.event_id.encode(), encode_event(e)) for e in events]  # over all three partitions

    async def owns(partitions: set[int]) -> bool:
        return pricer.partitions == partitions

    ends = await produce(broker.bootstrap, topic, spread(first))
    async with running(pricer) as task:
        await await_until(lambda: _done(pricer, ends, task), what="first events committed")
        await store.execute("DETACH TABLE usage_events")
        try:
            ends = await produce(broker.bootstrap, topic, spread(during))
            other = AIOKafkaConsumer(topic, bootstrap_servers=broker.bootstrap, group_id=f"g-{topic}",
                                     enable_auto_commit=False, session_timeout_ms=3000)
            await other.start()
            try:
                async def other_has_partitions() -> bool:
                    return bool(other.assignment())

                await await_until(other_has_partitions, timeout_s=30, what="a second member's assignment")
            finally:
                await other.stop()  # leaves the group: a second rebalance
            await await_until(lambda: owns({0, 1, 2}), timeout_s=30, what="the pricer owning every partition again")
            assert not task.done(), "the pricer died during the outage"
        finally:
            await store.execute("ATTACH TABLE usage_events")
        await await_until(lambda: _done(pricer, ends, task), timeout_s=60, what="catch-up after the outage")
    t = await totals(store, org)
    cost = expected_total(first + during)
    assert t["raw_rows"] == 120 and t["raw_ids"] == 120 and t["raw_cost"] == cost
    assert t["key_rollup_rows"] == 120 and t["key_rollup_cost"] == cost


async def test_partitions_revoked_while_their_batch_is_priced_are_left_to_the_next_owner(
    store: ChdbStore, broker: EmbeddedBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pricing yields to the event loop every PRICE_CHUNK events (in `meterline up` the gateway
    shares that loop), so the revoke listener can run in the middle of a flush's pricing and drop
    partitions from the batch being priced: here the one being priced (0) and one not reached yet
    (2). The flush then writes and commits only what it still owns (1); the next owner stores the
    rest, each event once."""
    org = f"org-{uuid.uuid4().hex[:8]}"
    topic = await new_topic(broker)
    events = make_events(org, 600)
    ends = await produce(broker.bootstrap, topic, [(e.event_id.encode(), encode_event(e)) for e in events])
    assert set(ends) == {0, 1, 2}
    monkeypatch.setattr(consumer, "PRICE_CHUNK", 10)
    priced = 0
    mid_pricing = asyncio.Event()

    def counting_price(event: UsageEvent, catalog: Catalog) -> Any:
        nonlocal priced
        priced += 1
        if priced == 15:  # in the second chunk of the first batch's first partition (0)
            mid_pricing.set()
        return price(event, catalog)

    monkeypatch.setattr(consumer, "price", counting_price)
    # the first batch closes on its 600th event, not on a timer: all three partitions are in it
    pricer = pricer_for(store, broker, topic, batch=600, wait_s=30)
    seen: dict[str, Any] = {}

    async def revoke_mid_pricing() -> None:
        await mid_pricing.wait()
        pending = pricer._pending  # noqa: SLF001 - the batch being priced
        seen.update(priced=priced, in_batch=sum(len(v) for v in pending.events.values()), partitions=set(pending.events))
        await pricer.on_revoked({0, 2})  # what aiokafka's coordinator calls when a rebalance takes them

    async with running(pricer) as task:
        revoker = asyncio.create_task(revoke_mid_pricing())

        async def kept_partition_done() -> bool:
            return await _done(pricer, {1: ends[1]}, task)

        await await_until(kept_partition_done, timeout_s=30, what="partition 1 committed")
        await revoker
        assert set(pricer.committed) == {1}, pricer.committed
    # the revoke ran while the batch of every partition was being priced, not after
    assert seen["partitions"] == {0, 1, 2} and seen["priced"] < seen["in_batch"], seen
    stored = await store.select("SELECT DISTINCT kafka_partition AS p FROM usage_events WHERE org_id = {o:String}", {"o": org})
    assert [r["p"] for r in stored] == [1]
    # the next owner: partition 1 is committed already, so it has 0 and 2 to commit
    await run_until_committed(pricer_for(store, broker, topic, batch=600), {0: ends[0], 2: ends[2]})
    await assert_each_stored_once(store, org, events)


async def test_events_with_odd_usage_are_stored_with_a_status(store: ChdbStore, broker: EmbeddedBroker) -> None:
    org = f"org-{uuid.uuid4().hex[:8]}"
    topic = await new_topic(broker)
    base = make_events(org, 4)
    odd = [
        msgspec.structs.replace(base[0], input_tokens=-5),
        msgspec.structs.replace(base[1], input_tokens=10, cache_read_tokens=500),
        msgspec.structs.replace(base[2], model="no-such-model", model_requested="no-such-model"),
        msgspec.structs.replace(base[3], output_tokens=10**12),
    ]
    minimal = b'{"event_id": "%s", "request_id": "r", "org_id": "%s", "provider": "openai", "route": "chat/completions", "started_at": "2026-03-14T09:00:00Z"}' % (
        str(uuid.uuid4()).encode(), org.encode())
    payloads = [(org.encode(), encode_event(e)) for e in odd] + [(org.encode(), minimal)]
    await run_until_committed(pricer_for(store, broker, topic), await produce(broker.bootstrap, topic, payloads))
    rows = await store.select(
        "SELECT pricing_status, count() AS n, sum(total_cost) AS cost FROM usage_events WHERE org_id = {o:String}"
        " GROUP BY pricing_status ORDER BY pricing_status", {"o": org})
    # Negative, cache above input, absurd: invalid. Unknown model, and an event naming no model
    # at all (every optional field missing): unknown. Each stored, at zero cost, for repricing.
    assert rows == [
        {"pricing_status": "invalid_usage", "n": 3, "cost": "0"},
        {"pricing_status": "unknown_model", "n": 2, "cost": "0"},
    ]
