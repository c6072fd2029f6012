"""The embedded store's insert path over the real engine and migrations: the pricer's rows go in
by position (JSONCompactEachRow under their fields' names, read as a table of their own) and land
in their own columns, with the types the table has at the time of the insert; one dedup token
holds across both forms of insert statement; a refused insert raises, even when the refusal comes
from a materialized view, and leaves the store usable; the rows' in-memory file is emptied after
each insert."""

from __future__ import annotations

import os
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import msgspec
import pytest

from services.pricer.rows import UsageRow
from services.store.base import StoreError, encode_insert
from services.store.chdb_store import ChdbStore, StatementFile


def a_row(org: str, **fields: object) -> UsageRow:
    """A row whose every column holds a value no other column holds, so a value written into
    the wrong column shows."""
    values: dict[str, object] = dict(
        event_id=str(uuid.uuid4()), request_id="req-a", org_id=org, team_id="team-b", key_id="key-c",
        provider="anthropic", route="messages", model_requested="claude-x", model="claude-x-1", priced_model="claude-x-p",
        started_at=datetime(2026, 3, 14, 9, 26, 53, 589000, tzinfo=timezone.utc), latency_ms=412.5, ttft_ms=88.25,
        status="ok", http_status=201, streamed=True, sandbox=False, usage_reported=True, input_tokens=1001,
        output_tokens=202, cache_read_tokens=303, cache_write_tokens=404, reasoning_tokens=55,
        input_cost=Decimal("0.000000000001"), cache_read_cost=Decimal("0.25"), cache_write_cost=Decimal("1.5"),
        output_cost=Decimal("123456789.123456789012"), total_cost=Decimal("123456790.873456789013"),
        pricing_status="priced", price_source="override", prompt_key="welcome", prompt_version=7,
        feature_tags=("beta", "ui"), tags=("env:prod", 'quote"and\\slash'), customer_id="acme", feature="chat",
        user_id="u-9", kafka_topic="topic-z", kafka_partition=3, kafka_offset=2**40 + 1,
    )
    values.update(fields)
    return UsageRow(**values)  # type: ignore[arg-type]


async def test_the_pricers_rows_go_in_by_position_and_land_in_their_columns(store: ChdbStore) -> None:
    org = f"org-{uuid.uuid4().hex[:8]}"
    row = a_row(org)
    encoded = await encode_insert([row])
    assert encoded.format == "JSONCompactEachRow" and encoded.columns == UsageRow.__struct_fields__
    assert encoded.data.startswith(b"[")  # values only: no column names on the wire
    await store.insert("usage_events", [row], dedup_token=f"t-{org}")
    names = ", ".join(UsageRow.__struct_fields__)
    [stored] = await store.select(
        f"SELECT {names} FROM usage_events WHERE org_id = {{o:String}}".replace("started_at", "toString(started_at) AS started_at"),
        {"o": org},
    )
    expected = {f: getattr(row, f) for f in UsageRow.__struct_fields__}
    expected["started_at"] = "2026-03-14 09:26:53.589"
    expected["feature_tags"], expected["tags"] = list(row.feature_tags), list(row.tags)  # arrays come back as lists
    for money in ("input_cost", "cache_read_cost", "cache_write_cost", "output_cost", "total_cost"):
        stored[money] = Decimal(stored[money])
    assert stored == expected
    # and the rollups read the same columns
    [key] = await store.select(
        "SELECT sum(input_tokens) AS i, sum(cache_write_tokens) AS w, toString(sum(total_cost)) AS c"
        " FROM spend_daily_by_key WHERE org_id = {o:String} AND key_id = 'key-c' AND model = 'claude-x-1'",
        {"o": org},
    )
    assert key == {"i": 1001, "w": 404, "c": "123456790.873456789013"}


async def test_mappings_and_ready_bytes_still_go_in_by_name(store: ChdbStore) -> None:
    org = f"org-{uuid.uuid4().hex[:8]}"
    assert (await encode_insert([{"org_id": org}])).format == "JSONEachRow"
    line = b'{"event_id":"%s","org_id":"%s","request_id":"by-bytes","started_at":"2026-03-14T09:00:00Z"}\n'
    await store.insert("usage_events", line % (str(uuid.uuid4()).encode(), org.encode()))
    await store.insert("usage_events", [{"event_id": str(uuid.uuid4()), "org_id": org, "request_id": "by-dict",
                                         "started_at": datetime(2026, 3, 14, tzinfo=timezone.utc)}])
    rows = await store.select("SELECT request_id FROM usage_events WHERE org_id = {o:String} ORDER BY request_id", {"o": org})
    assert [r["request_id"] for r in rows] == ["by-bytes", "by-dict"]


class Reading(msgspec.Struct, array_like=True):
    reading_id: int
    meter: str
    readings: list[str]


async def test_positional_rows_are_read_with_the_types_their_columns_have_now(store: ChdbStore) -> None:
    """The types positional rows are read with come from the table at each insert, never from an
    earlier one: after a migration widens a column, a value only the new type holds goes in whole."""
    table = f"readings_{uuid.uuid4().hex[:8]}"
    await store.execute(f"CREATE TABLE {table} (reading_id UInt8, meter LowCardinality(String),"
                        " readings Array(LowCardinality(String))) ENGINE = MergeTree ORDER BY meter")
    await store.insert(table, [Reading(7, "m-1", ["a", 'q"uote'])])
    # read as the UInt8 of before, 70,000 would go in as 112 (the engine wraps it, silently)
    await store.execute(f"ALTER TABLE {table} MODIFY COLUMN reading_id UInt32")
    await store.insert(table, [Reading(70_000, "m-2", ["b"])])
    rows = await store.select(f"SELECT reading_id, meter, readings FROM {table} ORDER BY reading_id")
    assert rows == [{"reading_id": 7, "meter": "m-1", "readings": ["a", 'q"uote']},
                    {"reading_id": 70_000, "meter": "m-2", "readings": ["b"]}]
    [kind] = await store.select(f"SELECT toTypeName(meter) AS t FROM {table} LIMIT 1")
    assert kind == {"t": "LowCardinality(String)"}  # read as String, stored as the table says


async def test_a_token_used_by_rows_by_name_makes_the_same_token_by_position_a_no_op(store: ChdbStore) -> None:
    """Rows by name go in with ``FROM INFILE``, rows by position from ``file()``: a batch that an
    earlier pricer inserted the first way and a later one replays the second way counts once, in
    the table and in its rollups."""
    org = f"org-{uuid.uuid4().hex[:8]}"
    token = f"t-{org}"
    first = a_row(org)
    by_name = {f: getattr(first, f) for f in UsageRow.__struct_fields__}
    await store.insert("usage_events", [by_name], dedup_token=token)
    await store.insert("usage_events", [a_row(org)], dedup_token=token)  # a new event id: only the token is the same
    counts = ("SELECT (SELECT count() FROM usage_events WHERE org_id = {o:String}) AS events,"
              " (SELECT sum(request_count) FROM spend_daily_by_key WHERE org_id = {o:String}) AS by_key,"
              " (SELECT sum(request_count) FROM spend_daily_by_customer WHERE org_id = {o:String}) AS by_customer")
    assert await store.select(counts, {"o": org}) == [{"events": 1, "by_key": 1, "by_customer": 1}]
    await store.insert("usage_events", [a_row(org)], dedup_token=f"{token}-other")
    assert await store.select(counts, {"o": org}) == [{"events": 2, "by_key": 2, "by_customer": 2}]


async def test_a_view_that_refuses_the_rows_fails_the_insert_and_the_store_goes_on(store: ChdbStore) -> None:
    """The pricer commits offsets only after an insert returned: an insert a materialized view
    refused must raise (chDB's streaming inserter returns success there, which is why the store
    does not use it)."""
    org = f"org-{uuid.uuid4().hex[:8]}"
    await store.execute("ALTER TABLE spend_daily_by_prompt ADD CONSTRAINT refuse_one CHECK org_id != {o:String}", {"o": org})
    try:
        with pytest.raises(StoreError, match="refuse_one"):
            await store.insert("usage_events", [a_row(org)], dedup_token=f"t-{org}")
    finally:
        await store.execute("ALTER TABLE spend_daily_by_prompt DROP CONSTRAINT refuse_one")
    with pytest.raises(StoreError, match="(?i)cannot parse"):
        await store.insert("usage_events", [{"event_id": "not-a-uuid", "org_id": org}])
    other = f"org-{uuid.uuid4().hex[:8]}"
    await store.insert("usage_events", [a_row(other)], dedup_token=f"t-{other}")
    assert await store.select("SELECT count() AS n FROM usage_events WHERE org_id = {o:String}", {"o": other}) == [{"n": 1}]


def rows_files_sizes(store: ChdbStore) -> set[int]:
    """The sizes of the files the engine reads statements' data from, one per connection."""
    return {os.stat(lane.body.path).st_size for lane in store._lanes}  # noqa: SLF001


async def test_the_rows_file_is_emptied_after_each_insert(store: ChdbStore) -> None:
    org = f"org-{uuid.uuid4().hex[:8]}"
    await store.insert("usage_events", [a_row(org) for _ in range(500)], dedup_token=f"t-{org}")
    assert rows_files_sizes(store) == {0}  # a batch's bytes are not held between inserts
    with pytest.raises(StoreError):
        await store.insert("usage_events", [{"event_id": "not-a-uuid", "org_id": org}])
    assert rows_files_sizes(store) == {0}  # nor after a refused one


@pytest.mark.parametrize("memfd", [True, False], ids=["memfd", "unlinked-temporary-file"])
def test_the_rows_file_holds_exactly_the_batch_while_the_engine_reads_it(monkeypatch: pytest.MonkeyPatch, memfd: bool) -> None:
    if not memfd:  # as on a system without memfd_create
        monkeypatch.delattr(os, "memfd_create")
    body = StatementFile()
    try:
        for data in (b"[1,2]\n" * 50_000, b"[3]\n"):  # a short batch after a long one: nothing of it left over
            with body.holding(data) as path:
                with open(path, "rb") as engine_view:
                    assert engine_view.read() == data
            assert os.stat(body.path).st_size == 0
    finally:
        body.close()
