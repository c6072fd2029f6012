"""The embedded store runs statements on several connections to the one engine: a read is
answered while another statement holds its connection (a pricer's insert, say), and statements
running at once each read their own data. On the real engine, with the real migrations."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

import pytest

from services.store.chdb_store import ChdbStore
from tests.integration.test_store_inserts import a_row, rows_files_sizes


def gate(tmp_path: Path) -> Path:
    """A named pipe: a statement reading it waits until the test writes to it and closes it."""
    path = tmp_path / f"gate-{uuid.uuid4().hex[:8]}"
    os.mkfifo(path)
    return path


@pytest.fixture
async def two_connections(store: ChdbStore) -> AsyncIterator[ChdbStore]:
    """A second store over the session's engine (one data directory per process, any number of
    connections to it), limited to two connections."""
    sibling = ChdbStore(store.path, connections=2)
    yield sibling
    await sibling.close()


async def test_a_read_is_answered_while_another_statement_holds_its_connection(
        two_connections: ChdbStore, tmp_path: Path) -> None:
    path = gate(tmp_path)
    held = asyncio.create_task(two_connections.select(f"SELECT count() AS n FROM file('{path}', 'TSV', 'line String')"))
    # opening the pipe to write returns once the held statement has opened it to read
    writer: IO[str] = await asyncio.wait_for(asyncio.to_thread(open, path, "w"), timeout=60)
    try:
        answered = await asyncio.wait_for(two_connections.select("SELECT 42 AS n"), timeout=60)
        assert answered == [{"n": 42}]
        assert not held.done()  # still reading the pipe: the read above did not wait for it
        assert len(two_connections._lanes) == 2  # noqa: SLF001 - it took the second connection
        writer.write("a\nb\nc\n")
    finally:
        writer.close()
    assert await asyncio.wait_for(held, timeout=60) == [{"n": 3}]


async def test_one_connection_runs_one_statement_at_a_time(store: ChdbStore, tmp_path: Path) -> None:
    """The counterpart: on a single connection the read waits for the held statement."""
    single = ChdbStore(store.path, connections=1)
    try:
        path = gate(tmp_path)
        held = asyncio.create_task(single.select(f"SELECT count() AS n FROM file('{path}', 'TSV', 'line String')"))
        writer: IO[str] = await asyncio.wait_for(asyncio.to_thread(open, path, "w"), timeout=60)
        try:
            waiting = asyncio.create_task(single.select("SELECT 42 AS n"))
            done, _ = await asyncio.wait({waiting}, timeout=0.5)
            assert not done  # queued behind the held statement
            writer.write("a\n")
        finally:
            writer.close()
        assert await asyncio.wait_for(held, timeout=60) == [{"n": 1}]
        assert await asyncio.wait_for(waiting, timeout=60) == [{"n": 42}]
    finally:
        await single.close()


async def test_inserts_running_at_once_each_store_exactly_their_own_rows(two_connections: ChdbStore) -> None:
    orgs = {f"org-{uuid.uuid4().hex[:8]}": n for n in (2_000, 1, 700, 33)}
    await asyncio.gather(*(two_connections.insert("usage_events", [a_row(org) for _ in range(n)], dedup_token=f"t-{org}")
                           for org, n in orgs.items()))
    counted = await two_connections.select(
        "SELECT org_id, count() AS n FROM usage_events WHERE org_id IN {orgs:Array(String)} GROUP BY org_id",
        {"orgs": list(orgs)})
    assert {r["org_id"]: r["n"] for r in counted} == orgs
    assert rows_files_sizes(two_connections) == {0}


async def test_closing_one_store_leaves_the_engine_to_the_others(store: ChdbStore) -> None:
    sibling = ChdbStore(store.path, connections=2)
    await asyncio.gather(*(sibling.select("SELECT 1 AS one") for _ in range(4)))
    await sibling.close()
    assert await store.select("SELECT count() AS n FROM schema_migrations WHERE version = 1") == [{"n": 1}]
