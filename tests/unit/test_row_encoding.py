"""The store's row encoding (services/store/base.py): a large batch is encoded in turns of the
event loop, into exactly the bytes of one encoding."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from decimal import Decimal

from services.store.base import ENCODE_CHUNK, encode_rows, encode_rows_in_turns


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
