"""The store's row encoding (services/store/base.py): a large batch is encoded in turns of the
event loop, into exactly the bytes of one encoding. And the types the embedded store reads
positional rows with (services/store/chdb_store.py): the table's, without LowCardinality."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from services.store.base import ENCODE_CHUNK, encode_rows, encode_rows_in_turns
from services.store.chdb_store import without_low_cardinality


async def test_a_large_batch_is_encoded_in_turns_into_the_same_bytes() -> None:
    rows = [{"id": f"e-{i}", "cost": Decimal("0.000125") * i, "at": datetime(2026, 3, 14, tzinfo=timezone.utc),
             "tags": ["env:prod", 'quote"and\\slash'], "note": "naïve\nline"} for i in range(2 * ENCODE_CHUNK + 7)]
    turns = 0

    async def elsewhere() -> None:  # what shares the loop: the gateway, in `meterline up`
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    other = asyncio.create_task(elsewhere())
    await asyncio.sleep(0)
    before = turns
    payload = await encode_rows_in_turns(rows)
    during = turns - before
    other.cancel()
    assert payload == encode_rows(rows)
    assert payload.count(b"\n") == len(rows)
    assert during >= 2  # three chunks: the loop turned between them


async def test_small_batches_and_bytes_are_passed_through() -> None:
    rows = [{"id": "a"}, {"id": "b"}]
    assert await encode_rows_in_turns(rows) == b'{"id":"a"}\n{"id":"b"}\n'
    assert await encode_rows_in_turns(b'{"id":"c"}\n') == b'{"id":"c"}\n'
    assert await encode_rows_in_turns([]) == b""


@pytest.mark.parametrize(("column_type", "read_as"), [
    ("LowCardinality(String)", "String"),
    ("Array(LowCardinality(String))", "Array(String)"),
    ("LowCardinality(Nullable(String))", "Nullable(String)"),
    ("Map(LowCardinality(String), Array(LowCardinality(String)))", "Map(String, Array(String))"),
    ("DateTime64(3, 'UTC')", "DateTime64(3, 'UTC')"),
    ("Nullable(Float64)", "Nullable(Float64)"),
])
def test_positional_rows_are_read_with_the_tables_types_without_low_cardinality(column_type: str, read_as: str) -> None:
    assert without_low_cardinality(column_type) == read_as
