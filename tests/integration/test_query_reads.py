"""Read paths of the query service over the real engine: keyset export batches, the billing
page locator, a customer's calls paged through its rollup, and the reads the rollup projections
answer."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta, timezone

from services.pricer.catalog import Catalog
from services.pricer.pricing import price
from services.pricer.rows import to_row
from services.query import aggregations, analytics, billing, spend
from services.query.aggregations import Window
from services.query.billing import locate
from services.query.params import Range
from services.store.chdb_store import ChdbStore
from tests.integration.test_pricer_exactly_once import make_events

BASE = datetime(2026, 3, 14, 9, 0, tzinfo=timezone.utc)


async def test_export_walks_every_row_once_across_batches(store: ChdbStore) -> None:
    org = f"org-{uuid.uuid4().hex[:8]}"
    events = make_events(org, 25)
    for e in events[:10]:
        e.started_at = BASE  # ten calls in the same millisecond: the keyset must order by id too
    await store.insert("usage_events", [to_row(price(e, Catalog()), 0, "t", 0, i) for i, e in enumerate(events)])
    window = Range(BASE, BASE + timedelta(days=1))
    seen = [r["event_id"] async for batch in analytics.export_rows(store, org, window, model="", customer="", feature="",
                                                                  team="", batch=4) for r in batch]
    assert sorted(seen) == sorted(e.event_id for e in events) and len(seen) == len(set(seen))


def test_locate_finds_the_day_and_the_items_to_skip() -> None:
    counts = {date(2026, 1, 1): 5, date(2026, 1, 2): 0, date(2026, 1, 3): 7}
    assert locate(counts, 0, "asc") == (date(2026, 1, 1), 0)
    assert locate(counts, 4, "asc") == (date(2026, 1, 1), 4)
    assert locate(counts, 5, "asc") == (date(2026, 1, 3), 0)
    assert locate(counts, 11, "asc") == (date(2026, 1, 3), 6)
    assert locate(counts, 12, "asc") is None
    assert locate(counts, 0, "desc") == (date(2026, 1, 3), 0)
    assert locate(counts, 7, "desc") == (date(2026, 1, 1), 0)


async def test_a_customers_calls_are_paged_through_the_days_they_fall_on(store: ChdbStore) -> None:
    org = f"org-{uuid.uuid4().hex[:8]}"
    events = make_events(org, 40)
    for i, e in enumerate(events):  # 0, 1, 3, 6, ... calls a day over nine days; every fifth call another customer's
        e.started_at = BASE + timedelta(days=min(8, int((2 * i) ** 0.5)), minutes=i % 7)
        e.customer_id = "other" if i % 5 == 4 else "acme"
        e.sandbox = i == 7
    await store.insert("usage_events", [to_row(price(e, Catalog()), 0, "t", 0, i) for i, e in enumerate(events)])
    first, last = BASE.date(), BASE.date() + timedelta(days=8)
    newest_first = (await store.select(
        "SELECT toString(event_id) AS id FROM usage_events WHERE org_id = {o:String} AND customer_id = 'acme'"
        " AND NOT sandbox ORDER BY started_at DESC, toString(event_id)", {"o": org}))
    expected = [r["id"] for r in newest_first]
    assert len(expected) == 31
    for limit in (1, 3, 7, 50):
        for page in range(1, len(expected) // limit + 3):
            rows, total = await analytics.customer_calls(store, org, first, last, "acme", limit, page)
            assert total == 31
            assert [r["event_id"] for r in rows] == expected[(page - 1) * limit:page * limit], (limit, page)
    detail = await analytics.customer(store, Window(org, first, last), "acme")
    per_day = {date.fromisoformat(d["date"]): d["calls"] for d in detail["daily"]}
    for page in (1, 4, 11):  # the detail's own daily counts page the same way
        assert await analytics.customer_calls(store, org, first, last, "acme", 3, page, per_day) == \
            await analytics.customer_calls(store, org, first, last, "acme", 3, page)
    rows, total = await analytics.customer_calls(store, org, first + timedelta(days=7), last, "acme", 50, 1)
    assert total == len(rows) and {r["event_id"] for r in rows} <= set(expected) and rows
    assert await analytics.customer_calls(store, org, first, last, "nobody", 10, 1) == ([], 0)


async def test_aggregations_read_the_rollup_projections(store: ChdbStore) -> None:
    """The projections of migration 0006 answer the aggregation reads (EXPLAIN names the one read):
    a change to a query that makes it fall back to the full rollup shows here, not only at scale."""
    reads: list[str] = []
    explain = store.select

    async def spy(sql: str, params: dict | None = None) -> list[dict]:
        if "spend_daily_by_" in sql:
            plan = await explain(f"EXPLAIN projections = 1 {sql}", params)
            reads.extend(line for r in plan for line in r.values() if "ReadFromMergeTree" in str(line))
        return await explain(sql, params)

    org = f"org-{uuid.uuid4().hex[:8]}"
    events = make_events(org, 5)
    for e in events:
        e.customer_id, e.feature = "acme", "chat"
    await store.insert("usage_events", [to_row(price(e, Catalog()), 0, "t", 0, i) for i, e in enumerate(events)])
    w = Window(org, BASE.date(), BASE.date())
    store.select = spy  # type: ignore[method-assign]
    try:
        await aggregations.monthly(store, w)
        await aggregations.by_team(store, w)
        await analytics.by_key(store, w)
        await analytics.daily(store, w)
        await billing.analytics(store, org, billing.Range(BASE, BASE + timedelta(days=1)))
        await analytics.customers(store, w, "cost", "desc", 10, 1)
        await analytics.customer(store, w, "acme")
        await analytics.customer_calls(store, org, w.start, w.end, "acme", 10, 1)
        await analytics.features(store, w)
        await analytics.customer_by_feature(store, w)
    finally:
        del store.select
    rollup_reads = [r for r in reads if "spend_daily_by_" in r]
    assert rollup_reads == [], rollup_reads  # every read names a projection, none the rollup table itself
    assert any("by_team_model" in r for r in reads) and any("by_key_day" in r for r in reads)
    assert any("customer_first" in r for r in reads) and any("by_customer_day" in r for r in reads)
    assert any("by_feature_day" in r for r in reads) and any("by_customer_feature" in r for r in reads)
