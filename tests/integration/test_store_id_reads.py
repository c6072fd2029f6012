"""Reads filtered by a set of ids sent beside the statement (``select_with_ids``), on the real
embedded engine with the real migrations: the pricer's check for events already stored."""

from __future__ import annotations

import uuid

import pytest

from services.pricer.sink import already_stored
from services.store.base import ID_TABLE, StoreError
from services.store.chdb_store import ChdbStore
from tests.integration.test_store_inserts import a_row, rows_files_sizes

STORED = f"SELECT toString(event_id) AS id FROM usage_events WHERE org_id = {{o:String}} AND event_id IN (SELECT id FROM {ID_TABLE})"


async def test_a_read_by_ids_finds_exactly_the_stored_ones(store: ChdbStore) -> None:
    org = f"org-{uuid.uuid4().hex[:8]}"
    stored = [a_row(org, event_id=str(uuid.uuid4())) for _ in range(3)]
    await store.insert("usage_events", stored)
    new = [str(uuid.uuid4()) for _ in range(2)]
    asked = [stored[0].event_id, new[0], stored[2].event_id, new[1]]

    found = await store.select_with_ids(STORED, {"o": org}, asked)

    assert sorted(r["id"] for r in found) == sorted([stored[0].event_id, stored[2].event_id])
    assert await store.select_with_ids(STORED, {"o": org}, []) == []
    assert rows_files_sizes(store) == {0}  # the ids are not left for the next statement


async def test_a_malformed_id_fails_the_read_and_the_store_goes_on(store: ChdbStore) -> None:
    org = f"org-{uuid.uuid4().hex[:8]}"
    row = a_row(org, event_id=str(uuid.uuid4()))
    await store.insert("usage_events", [row])
    with pytest.raises(StoreError):
        await store.select_with_ids(STORED, {"o": org}, [row.event_id, "not-a-uuid"])
    assert rows_files_sizes(store) == {0}
    assert await store.select_with_ids(STORED, {"o": org}, [row.event_id]) == [{"id": row.event_id}]


async def test_the_already_stored_check_of_a_20k_batch(store: ChdbStore) -> None:
    """The pricer's batch size: 20k ids, a few of them stored (in the batch's time range)."""
    org = f"org-{uuid.uuid4().hex[:8]}"
    batch = [a_row(org, event_id=str(uuid.uuid4())) for _ in range(20_000)]
    await store.insert("usage_events", batch[5:20_000:4000])
    assert await already_stored(store, batch) == {r.event_id for r in batch[5:20_000:4000]}
