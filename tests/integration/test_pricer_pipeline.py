"""The pricer prices its next batch while one is being written (services/pricer/consumer.py),
over a real broker and a real engine: the overlap happens, offsets are still committed in order,
a write that fails for good stops everything after it, and a rebalance never waits for a write."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from schemas.events import UsageEvent, encode_event
from services.common.broker import EmbeddedBroker
from services.pricer import consumer
from services.pricer.catalog import Catalog
from services.pricer.consumer import Pricer
from services.pricer.pricing import price
from services.store import StoreError
from services.store.chdb_store import ChdbStore
from tests.integration.test_pricer_exactly_once import (
    assert_each_stored_once, make_events, new_topic, pricer_for, produce, run_until_committed,
)
from tests.support import PassThroughStore, await_until

BATCH = 100


class HeldWrites(PassThroughStore):
    """The real store; its first insert into usage_events waits for ``release`` (then fails with
    ``fail_with``, if set). Every usage_events insert's token is kept, in the order they began."""

    def __init__(self, store: ChdbStore) -> None:
        super().__init__(store)
        self.release = asyncio.Event()
        self.fail_with: BaseException | None = None
        self.event_inserts: list[str | None] = []

    async def insert(self, table: str, rows: Any, *, dedup_token: str | None = None) -> None:
        if table == "usage_events":
            self.event_inserts.append(dedup_token)
            if len(self.event_inserts) == 1:
                await self.release.wait()
                if self.fail_with is not None:
                    raise self.fail_with
        await super().insert(table, rows, dedup_token=dedup_token)


def count_pricing(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many events the pricer has priced, in a one-item list."""
    priced = [0]

    def counting_price(event: UsageEvent, catalog: Catalog) -> Any:
        priced[0] += 1
        return price(event, catalog)

    monkeypatch.setattr(consumer, "price", counting_price)
    return priced


async def _at_least(counter: list[int], n: int) -> bool:
    return counter[0] >= n


@contextlib.asynccontextmanager
async def held_pricer(held: HeldWrites, broker: EmbeddedBroker, topic: str) -> AsyncIterator[tuple[Pricer, asyncio.Task[None]]]:
    """A pricer over ``held`` consuming ``topic``, in batches that close on their ``BATCH``th
    event only. On the way out the held write is let go, and the pricer stopped and closed; its
    run's outcome stays in the task for the test to check."""
    pricer = pricer_for(held, broker, topic, batch=BATCH, wait_s=30)  # type: ignore[arg-type]
    await pricer.start()
    task = asyncio.create_task(pricer.run())
    try:
        yield pricer, task
    finally:
        held.release.set()
        pricer.stop()
        await asyncio.gather(task, return_exceptions=True)
        await pricer.close()


async def setup(broker: EmbeddedBroker, n: int) -> tuple[str, str, list[UsageEvent], dict[int, int]]:
    org = f"org-{uuid.uuid4().hex[:8]}"
    topic = await new_topic(broker)
    events = make_events(org, n)
    ends = await produce(broker.bootstrap, topic, [(e.event_id.encode(), encode_event(e)) for e in events])
    return org, topic, events, ends


async def test_the_next_batch_is_priced_while_one_is_written_and_committed_only_after_it(
    store: ChdbStore, broker: EmbeddedBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    org, topic, events, ends = await setup(broker, 3 * BATCH)
    priced = count_pricing(monkeypatch)
    held = HeldWrites(store)
    async with held_pricer(held, broker, topic) as (pricer, task):
        await await_until(lambda: _at_least([len(held.event_inserts)], 1), timeout_s=30, what="the first insert begun")
        # The first batch's insert is held; the second batch is read and priced meanwhile.
        await await_until(lambda: _at_least(priced, 2 * BATCH), timeout_s=30, what="the second batch priced")
        assert not task.done()
        # ... but not written or committed before the first has been
        assert len(held.event_inserts) == 1 and pricer.committed == {}
        held.release.set()
        await await_until(lambda: _committed(pricer, ends, task), timeout_s=30, what=f"offsets {ends} committed")
    task.result()
    assert pricer.committed == ends
    assert len(held.event_inserts) == 3
    assert_written_in_offset_order(held.event_inserts, ends)
    await assert_each_stored_once(store, org, events)


async def test_a_write_that_fails_for_good_stops_the_pricer_before_the_next_batch_is_written(
    store: ChdbStore, broker: EmbeddedBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    org, topic, events, ends = await setup(broker, 2 * BATCH)
    priced = count_pricing(monkeypatch)
    held = HeldWrites(store)
    held.fail_with = RuntimeError("the store lost its disk")
    async with held_pricer(held, broker, topic) as (pricer, task):
        await await_until(lambda: _at_least(priced, 2 * BATCH), timeout_s=30, what="the second batch priced")
        held.release.set()  # the first write now fails
        with pytest.raises(RuntimeError, match="lost its disk"):
            await asyncio.wait_for(asyncio.shield(task), timeout=30)
    # The second batch, priced and waiting, was neither inserted nor committed.
    assert len(held.event_inserts) == 1 and pricer.committed == {}
    rows = await store.select("SELECT count() AS n FROM usage_events WHERE org_id = {o:String}", {"o": org})
    assert int(rows[0]["n"]) == 0
    # the next pricer stores every event, once
    await run_until_committed(pricer_for(store, broker, topic, batch=BATCH), ends)
    await assert_each_stored_once(store, org, events)


async def test_a_revoke_while_a_write_is_in_flight_does_not_wait_for_it(
    store: ChdbStore, broker: EmbeddedBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The revoke listener holds up the whole group's rebalance: it must not wait for a write
    (which may be waiting out a store outage), only drop the revoked partitions from the batch
    being read. The write then commits nothing it lost, and the next owner stores the rest."""
    org, topic, events, ends = await setup(broker, 3 * BATCH)
    priced = count_pricing(monkeypatch)
    held = HeldWrites(store)
    async with held_pricer(held, broker, topic) as (pricer, task):
        await await_until(lambda: _at_least([len(held.event_inserts)], 1), timeout_s=30, what="the first insert begun")
        await await_until(lambda: _at_least(priced, BATCH + 1), timeout_s=30, what="the next batch being read")
        await asyncio.wait_for(pricer.on_revoked({0, 1, 2}), timeout=5)  # returns while the write is held
        assert not pricer.partitions and len(held.event_inserts) == 1
        held.release.set()
        await await_until(lambda: _write_settled(pricer), timeout_s=30, what="the held write settled")
    task.result()
    assert pricer.committed == {}  # every partition was lost before its write could commit
    await run_until_committed(pricer_for(store, broker, topic, batch=BATCH), ends)
    await assert_each_stored_once(store, org, events)


async def _committed(pricer: Pricer, ends: dict[int, int], task: asyncio.Task) -> bool:
    if task.done():
        task.result()
    return all(pricer.committed.get(p, 0) >= end for p, end in ends.items())


async def _write_settled(pricer: Pricer) -> bool:
    return not pricer._write_unsettled()  # noqa: SLF001 - the write task's state


def _ranges(token: str | None) -> dict[int, tuple[int, int]]:
    """The offset range of each partition in a block token (``topic:p:first-last+...:digest``)."""
    assert token is not None
    ranges = token.split(":", 1)[1].rsplit(":", 1)[0]
    parts = (r.split(":") for r in ranges.split("+"))
    return {int(p): (int(span.split("-")[0]), int(span.split("-")[1])) for p, span in parts}


def assert_written_in_offset_order(tokens: list[str | None], ends: dict[int, int]) -> None:
    """Each partition's ranges, in the order the inserts began, follow on from one another."""
    next_offset = dict.fromkeys(ends, 0)
    for token in tokens:
        for p, (first, last) in _ranges(token).items():
            assert first == next_offset[p], (p, first, next_offset[p], tokens)
            next_offset[p] = last + 1
    assert next_offset == ends, tokens


class FailingWrites(PassThroughStore):
    """The real store, refusing inserts into usage_events while ``failing`` is set."""

    def __init__(self, store: ChdbStore) -> None:
        super().__init__(store)
        self.failing = False

    async def insert(self, table: str, rows: Any, *, dedup_token: str | None = None) -> None:
        if table == "usage_events" and self.failing:
            raise StoreError("the store is down")
        await super().insert(table, rows, dedup_token=dedup_token)


async def test_a_failed_flush_on_revoke_is_given_up_and_what_is_kept_is_read_again(
    store: ChdbStore, broker: EmbeddedBroker
) -> None:
    """The revoke listener's flush does not retry: when its write fails, the batch (already out
    of the pending one) is given up. The pricer carries on, and the partitions it keeps are read
    again from their committed offsets, not on from where the lost batch ended."""
    org, topic, events, ends = await setup(broker, 60)
    failing = FailingWrites(store)
    # The batch window is long enough to revoke before the batch closes, and short enough that
    # the consume loop's poll, which the window bounds, soon returns to recover the rest.
    pricer = pricer_for(failing, broker, topic, batch=1_000, wait_s=5)  # type: ignore[arg-type]
    await pricer.start()
    task = asyncio.create_task(pricer.run())
    try:
        await await_until(lambda: _at_least([pricer._pending.count], 60), timeout_s=30, what="every event read")  # noqa: SLF001
        failing.failing = True
        await pricer.on_revoked({0})  # its flush fails; the listener logs it and returns
        failing.failing = False
        assert pricer.stored_total == 0 and pricer._pending.count == 0  # noqa: SLF001 - the batch was given up
        kept = sum(end for p, end in ends.items() if p != 0)
        await await_until(lambda: _at_least([pricer._pending.count], kept), timeout_s=30,  # noqa: SLF001
                          what="the kept partitions read again")
        assert not task.done(), "the pricer stopped on the revoke's failed write"
    finally:
        pricer.stop()
        await task  # flushes what it holds
        await pricer.close()
    assert pricer.committed == {p: end for p, end in ends.items() if p != 0}
    # the next owner of partition 0 (1 and 2 are committed already)
    await run_until_committed(pricer_for(store, broker, topic, batch=1_000), {0: ends[0]})
    await assert_each_stored_once(store, org, events)
