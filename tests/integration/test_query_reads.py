"""Read paths of the query service over the real engine: keyset export batches, the billing
page locator, a customer's calls paged through its rollup, the reads the rollup projections
answer, and the spend log summary from rollups and from the calls."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import msgspec

from schemas.events import UsageEvent
from services.pricer.catalog import Catalog
from services.pricer.pricing import price
from services.pricer.rows import to_row
from services.query import aggregations, analytics, billing, records, spend
from services.query.aggregations import Window
from services.query.billing import locate
from services.query.labels import LabelCache
from services.query.params import Range
from services.query.responses import encode_json
from services.store.chdb_store import ChdbStore
from tests.integration.test_pricer_exactly_once import expected_total, make_events
from tests.support import PassThroughStore

BASE = datetime(2026, 3, 14, 9, 0, tzinfo=timezone.utc)


async def store_calls(store: ChdbStore, events: list[UsageEvent]) -> None:
    """The calls priced and stored as the pricer stores them (offsets in list order)."""
    await store.insert("usage_events", [to_row(price(e, Catalog()), 0, "t", 0, i) for i, e in enumerate(events)])


async def a_new_orgs_calls(store: ChdbStore, n: int, **fields: Any) -> tuple[str, list[UsageEvent]]:
    """A new organisation and ``n`` calls of it, stored, each with ``fields`` set."""
    org = f"org-{uuid.uuid4().hex[:8]}"
    events = [msgspec.structs.replace(e, **fields) for e in make_events(org, n)]
    await store_calls(store, events)
    return org, events


async def test_export_walks_every_row_once_across_batches(store: ChdbStore) -> None:
    org = f"org-{uuid.uuid4().hex[:8]}"
    events = make_events(org, 25)
    for e in events[:10]:
        e.started_at = BASE  # ten calls in the same millisecond: the keyset must order by id too
    await store_calls(store, events)
    window = Range(BASE, BASE + timedelta(days=1))
    seen = [r["event_id"] async for batch in analytics.export_rows(store, org, window, model="", customer="", feature="",
                                                                  team="", batch=4) for r in batch]
    assert sorted(seen) == sorted(e.event_id for e in events) and len(seen) == len(set(seen))


async def test_the_export_comes_oldest_first_and_keeps_to_each_filter_given(store: ChdbStore) -> None:
    """Filters are written into the statement only when given (``filters.optional``): each one
    alone, and all at once, selects exactly the calls it names; none selects every call, in the
    table's order (time, then the id as a UUID), whatever the batch size."""
    org = f"org-{uuid.uuid4().hex[:8]}"
    events = make_events(org, 12)
    for i, e in enumerate(events):
        e.started_at = BASE + timedelta(seconds=i // 3)  # three calls a second: ties across batches
        e.customer_id, e.feature, e.team_id = f"c{i % 2}", ("chat", "search", "")[i % 3], f"t{i % 4}"
        if i % 4 == 1:  # answered by another model than the one asked for
            e.model, e.model_requested = "gpt-4o-mini-2024-07-18", "gpt-4o-mini"
    events[11].sandbox = True
    await store_calls(store, events)
    window = Range(BASE, BASE + timedelta(days=1))

    async def exported(batch: int = 5000, **filters: str) -> list[str]:
        given = {"model": "", "customer": "", "feature": "", "team": "", **filters}
        return [r["request_id"] async for rows in analytics.export_rows(store, org, window, batch=batch, **given) for r in rows]

    table_order = [r["request_id"] for r in await store.select(
        "SELECT request_id FROM usage_events WHERE org_id = {o:String} AND NOT sandbox ORDER BY started_at, event_id",
        {"o": org})]
    assert len(table_order) == 11
    for batch in (1, 2, 3, 5, 11, 12):
        assert await exported(batch) == table_order, batch
    metered = events[:11]
    for name, value, selects in (
        ("customer", "c1", lambda e: e.customer_id == "c1"),
        ("feature", "search", lambda e: e.feature == "search"),
        ("team", "t2", lambda e: e.team_id == "t2"),
        ("model", "gpt-4o-mini", lambda e: e.model_requested == "gpt-4o-mini"),  # the model asked for
        ("model", "gpt-4o-mini-2024-07-18", lambda e: e.model == "gpt-4o-mini-2024-07-18"),  # or the one that answered
    ):
        expected = [r for r in table_order if selects(next(e for e in metered if e.request_id == r))]
        assert expected and await exported(2, **{name: value}) == expected, (name, value)
    everything = await exported(2, model="gpt-4o-mini", customer="c1", feature="chat", team="t1")
    assert everything == [e.request_id for e in metered if e.model_requested == "gpt-4o-mini" and e.customer_id == "c1"
                          and e.feature == "chat" and e.team_id == "t1"] != []


async def test_usage_records_keep_to_each_filter_given(store: ChdbStore) -> None:
    org = f"org-{uuid.uuid4().hex[:8]}"
    events = make_events(org, 8)
    for i, e in enumerate(events):
        e.route, e.customer_id, e.tags = "usage/record", f"acct-{i % 2}", (f"context:{('batch', 'chat')[i % 2 == 0 and i > 3]}",)
        e.model = e.model_requested = ("gpt-4o", "gpt-4o-mini")[i % 3 == 0]
    events[7].route = "chat/completions"  # proxied: not a usage record
    await store_calls(store, events)

    async def ids(account: str | None = None, model: str | None = None, context: str | None = None) -> set[str]:
        rows = await records.records(store, org, account_id=account, model_id=model, context=context, limit=100)
        return {r["transactionId"] for r in rows}

    recorded = events[:7]
    assert await ids() == await ids("", "", "") == {e.request_id for e in recorded}
    assert await ids("acct-1") == {e.request_id for e in recorded if e.customer_id == "acct-1"}
    assert await ids(model="gpt-4o-mini") == {e.request_id for e in recorded if e.model == "gpt-4o-mini"}
    assert await ids(context="chat") == {e.request_id for e in recorded if e.tags == ("context:chat",)} != set()
    assert await ids("acct-0", "gpt-4o", "chat") == {e.request_id for e in recorded if e.customer_id == "acct-0"
                                                     and e.model == "gpt-4o" and e.tags == ("context:chat",)} != set()


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
    for e in events[31:34]:  # calls in the same millisecond: pages must split them in one order
        e.started_at = events[30].started_at
    await store_calls(store, events)
    first, last = BASE.date(), BASE.date() + timedelta(days=8)
    newest_first = (await store.select(
        "SELECT toString(event_id) AS id FROM usage_events WHERE org_id = {o:String} AND customer_id = 'acme'"
        " AND NOT sandbox ORDER BY started_at DESC, event_id DESC", {"o": org}))  # ties: newest id (UUID) first
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


class CountedReads(PassThroughStore):
    """The real store, counting the reads of the raw table (the pages of calls)."""

    def __init__(self, store: ChdbStore) -> None:
        super().__init__(store)
        self.raw_reads = 0

    async def select(self, sql: str, params: Any = None) -> list[dict[str, Any]]:
        self.raw_reads += "FROM usage_events" in sql
        return await super().select(sql, params)


async def test_a_customers_detail_and_calls_read_at_once_give_every_page_as_read_in_turn(store: ChdbStore) -> None:
    """The page is read beside the detail as if it lay within the window's last day, and read
    again over its own days when it does not: every page is the page read in turn, and the
    first pages, on the last day, take one read of the calls."""
    org = f"org-{uuid.uuid4().hex[:8]}"
    events = make_events(org, 40)
    for i, e in enumerate(events):  # 0, 1, 3, 6, ... calls a day over nine days: 9 on the last
        e.started_at = BASE + timedelta(days=min(8, int((2 * i) ** 0.5)), minutes=i % 7)
        e.customer_id = "other" if i % 5 == 4 else "acme"
        e.sandbox = i == 7
    await store_calls(store, events)
    first, last = BASE.date(), BASE.date() + timedelta(days=8)
    counted = CountedReads(store)
    for w in (Window(org, first, last), Window(org, first, last - timedelta(days=1)), Window(org, last, last)):
        for limit in (2, 7, 50):  # 2: pages inside the last day's 9 calls, one across its edge, the rest before it
            for page in range(1, 31 // limit + 3):
                counted.raw_reads = 0
                detail, rows, total = await analytics.customer_with_calls(counted, w, "acme", limit, page)  # type: ignore[arg-type]
                assert detail == await analytics.customer(store, w, "acme")
                assert (rows, total) == await analytics.customer_calls(store, org, w.start, w.end, "acme", limit, page), (w, limit, page)
                on_last_day = next(d["calls"] for d in detail["daily"] if d["date"] == w.end.isoformat())
                # the guess, and a second read unless the page lies within the last day (or past the end)
                assert counted.raw_reads == (1 if min(page * limit, total) <= on_last_day or (page - 1) * limit >= total else 2), \
                    (w, limit, page)
    for w in (Window(org, first, last, provider="openai"), Window(org, first, last, include_sandbox=True)):
        detail, rows, total = await analytics.customer_with_calls(store, w, "acme", 5, 2)
        assert detail == await analytics.customer(store, w, "acme")
        assert (rows, total) == await analytics.customer_calls(store, org, w.start, w.end, "acme", 5, 2)
    assert await analytics.customer_with_calls(store, Window(org, first, last), "nobody", 10, 1) == (
        await analytics.customer(store, Window(org, first, last), "nobody"), [], 0)


async def test_billing_pages_cover_every_item_once_both_ways_through_calls_made_in_the_same_millisecond(
    store: ChdbStore,
) -> None:
    org = f"org-{uuid.uuid4().hex[:8]}"
    events = make_events(org, 12)
    for i, e in enumerate(events):  # eight calls in one millisecond on the first day, four the next
        e.started_at = BASE if i < 8 else BASE + timedelta(days=1, minutes=i)
    await store_calls(store, events)
    window = Range(BASE - timedelta(hours=1), BASE + timedelta(days=2))
    walked: dict[str, list[tuple[str, str]]] = {}
    for order in ("asc", "desc"):
        items, page = [], 1
        while True:
            entries, total = await billing.page(store, billing.Page(org, window, page, 5, order))  # type: ignore[arg-type]
            if not entries:
                break
            items += [(e["inferenceDetails"]["requestId"], e["sku"]) for e in entries]
            page += 1
        assert len(items) == len(set(items)) == total and total >= 2 * len(events), (order, total, items)
        walked[order] = items
    calls = {order: [rid for n, (rid, _) in enumerate(items) if n == 0 or items[n - 1][0] != rid]
             for order, items in walked.items()}
    assert sorted(calls["asc"]) == sorted(e.request_id for e in events)
    assert calls["desc"] == calls["asc"][::-1]  # one order of the calls, read forwards or backwards


async def test_pages_of_calls_are_read_in_primary_key_order(store: ChdbStore) -> None:
    """Every page of calls (spend logs, a customer's calls, usage records, billing line items both
    ways, the export's batches) is read in the table's order and stops when the page is full: in the plan, the whole
    ORDER BY is the prefix read in order and nothing is sorted after it. A tie broken by the
    string id, or in the other direction, sorts every call in the range first."""
    plans: list[tuple[str, str]] = []
    select = store.select

    async def spy(sql: str, params: dict | None = None) -> list[dict]:
        if "FROM usage_events" in sql and "ORDER BY" in sql:
            lines = [str(v) for r in await select(f"EXPLAIN actions = 1 {sql}", params) for v in r.values()]
            sort = {k: line.split(":", 1)[1].strip() for line in lines for k in ("Prefix", "Result")
                    if f"{k} sort description:" in line}
            plans.append((sort.get("Prefix", ""), sort.get("Result", "")))
        return await select(sql, params)

    org, _ = await a_new_orgs_calls(store, 6, customer_id="acme", route="usage/record")
    day = Range(BASE - timedelta(days=1), BASE + timedelta(days=1))
    store.select = spy  # type: ignore[method-assign]
    try:
        await spend.logs(store, org, day, request_id=None, key_id=None, user=None, limit=10)
        await analytics.customer_calls(store, org, day.first_day, day.last_day, "acme", 10, 1)
        await records.records(store, org, account_id=None, model_id=None, context=None, limit=10)
        for order in ("asc", "desc"):
            await billing.page(store, billing.Page(org, day, 1, 10, order))  # type: ignore[arg-type]
        async for _ in analytics.export_rows(store, org, day, model="", customer="", feature="", team="", batch=4):
            pass  # two batches: the first, and one past the first's last call
    finally:
        store.select = select  # type: ignore[method-assign]
    assert len(plans) == 7
    for prefix, result in plans:  # billing then orders a call's few line items after the prefix
        assert prefix in ("started_at ASC, event_id ASC", "started_at DESC, event_id DESC"), (prefix, result)
        assert result.startswith(prefix)


async def test_aggregations_read_the_rollup_projections(store: ChdbStore) -> None:
    """The projections of migration 0006 answer the aggregation reads (EXPLAIN names the one read):
    a change to a query that makes it fall back to the full rollup shows here, not only at scale."""
    reads: list[str] = []
    explain, select_json = store.select, store.select_json

    async def plan(sql: str, params: dict | None) -> None:
        if "spend_daily_by_" in sql:
            lines = await explain(f"EXPLAIN projections = 1 {sql}", params)
            reads.extend(line for r in lines for line in r.values() if "ReadFromMergeTree" in str(line))

    async def spy(sql: str, params: dict | None = None) -> list[dict]:
        await plan(sql, params)
        return await explain(sql, params)

    async def spy_json(sql: str, params: dict | None = None) -> bytes:
        await plan(sql, params)
        return await select_json(sql, params)

    org, _ = await a_new_orgs_calls(store, 5, customer_id="acme", feature="chat")
    w = Window(org, BASE.date(), BASE.date())
    store.select, store.select_json = spy, spy_json  # type: ignore[method-assign]
    try:
        await aggregations.monthly(store, w)
        await aggregations.by_team(store, LabelCache(store), w)
        await analytics.by_key(store, LabelCache(store), w)
        await analytics.daily(store, w)
        await billing.analytics(store, org, billing.Range(BASE, BASE + timedelta(days=1)))
        await analytics.customers(store, w, "cost", "desc", 10, 1)
        await analytics.customer(store, w, "acme")
        await analytics.customer_calls(store, org, w.start, w.end, "acme", 10, 1)
        await analytics.features(store, w)
        await analytics.customer_by_feature(store, w)
    finally:
        del store.select, store.select_json
    rollup_reads = [r for r in reads if "spend_daily_by_" in r]
    assert rollup_reads == [], rollup_reads  # every read names a projection, none the rollup table itself
    assert any("by_team_model" in r for r in reads) and any("by_key_day" in r for r in reads)
    assert any("customer_first" in r for r in reads) and any("by_customer_day" in r for r in reads)
    assert any("by_feature_day" in r for r in reads) and any("by_customer_feature" in r for r in reads)


async def test_the_spend_log_summary_reads_projections_and_agrees_with_the_calls(store: ChdbStore) -> None:
    """Over whole days without filters the summary is answered from the per-day projections of
    migration 0007; filtered, or over part of a day, from the calls themselves. Both must give
    exactly the spend of the calls, per day, model, key and user, also once a duplicate of a call
    has been stored and merged away (so a day's spend stays the sum of its users)."""
    org = f"org-{uuid.uuid4().hex[:8]}"
    events = make_events(org, 60)
    for i, e in enumerate(events):
        e.started_at = BASE + timedelta(days=i % 3, hours=i % 5)
        e.model = ("gpt-4o-2024-08-06", "gpt-4o-mini-2024-07-18")[i % 2]
        e.key_id, e.user = f"key-{i % 4}", f"user-{i % 7}" if i % 6 else ""
        e.sandbox = i == 11  # left out of every summary
    priced = [price(e, Catalog()) for e in events]
    await store.insert("usage_events", [to_row(p, 0, "t", 0, i) for i, p in enumerate(priced)])
    # a call stored twice (as a replay outside the deduplication window would), then merged away
    await store.insert("usage_events", [to_row(priced[5], 0, "t", 0, 5)])
    await store.execute("OPTIMIZE TABLE usage_events FINAL")

    def expected(keep: Callable[[UsageEvent], bool]) -> list[dict[str, Any]]:
        days: dict[str, dict[str, Any]] = {}
        for p in priced:
            e = p.event
            if e.sandbox or not keep(e):
                continue
            day = days.setdefault(e.started_at.date().isoformat(), {"spend": Decimal(0), "request_count": 0,
                                                                       "models": {}, "api_keys": {}, "users": {}})
            day["spend"] += p.cost.total
            day["request_count"] += 1
            for into, name in (("models", e.model), ("api_keys", e.key_id), ("users", e.user)):
                day[into][name] = day[into].get(name, Decimal(0)) + p.cost.total
        return [{"startTime": d, **v} for d, v in sorted(days.items())]

    def decoded(body: bytes) -> list[dict[str, Any]]:
        return json.loads(body, parse_float=Decimal)

    whole = Range(BASE.replace(hour=0), BASE.replace(hour=0) + timedelta(days=3))
    statements: list[tuple[str, dict | None]] = []
    select_json = store.select_json

    async def spy(sql: str, params: dict | None = None) -> bytes:
        statements.append((sql, params))
        return await select_json(sql, params)

    store.select_json = spy  # type: ignore[method-assign]
    try:
        answer = decoded(await spend.logs_by_date(store, org, whole, key_id=None, user=None))
    finally:
        del store.select_json
    assert answer == expected(lambda e: True) and len(answer) == 3 and answer[0]["users"][""] > 0
    plan = await store.select("EXPLAIN projections = 1 " + statements[0][0], statements[0][1])
    reads = [str(v).split("──")[-1].strip() for r in plan for v in r.values() if "ReadFromMergeTree" in str(v)]
    assert sorted(reads) == ["ReadFromMergeTree (by_day_key)", "ReadFromMergeTree (by_day_model)",
                             "ReadFromMergeTree (by_day_user)"], reads

    part = Range(BASE.replace(hour=11), BASE.replace(hour=0) + timedelta(days=3))  # from 11:00: the calls themselves
    assert decoded(await spend.logs_by_date(store, org, part, key_id=None, user=None)) == \
        expected(lambda e: e.started_at >= part.start) != expected(lambda e: True)
    assert decoded(await spend.logs_by_date(store, org, whole, key_id="key-1", user=None)) == \
        expected(lambda e: e.key_id == "key-1")
    assert decoded(await spend.logs_by_date(store, org, whole, key_id=None, user="user-3")) == \
        expected(lambda e: e.user == "user-3")
    assert decoded(await spend.logs_by_date(store, org, whole, key_id="-", user=None)) == []


async def test_features_are_the_calls_folded_per_feature_and_day(store: ChdbStore) -> None:
    """The store folds each feature's days (``analytics.features``): every feature's cost, calls
    and days must be those of its calls, the days in order, the average per call rounded half-even
    to 12 decimals, the costliest feature first; calls without a feature, on other days or in the
    sandbox are left out."""
    org = f"org-{uuid.uuid4().hex[:8]}"
    events = make_events(org, 40)
    for i, e in enumerate(events):
        e.started_at = BASE + timedelta(days=i % 5, minutes=i)
        e.feature = ("chat", "search", "summarize", "")[i % 4]
        e.output_tokens = 10 + i * (3 if e.feature == "search" else 1)  # unequal totals: a defined order
        e.sandbox = i % 13 == 12
    await store_calls(store, events)
    w = Window(org, BASE.date(), (BASE + timedelta(days=3)).date())  # the fifth day is outside the window

    expected: dict[str, dict[str, Any]] = {}
    for e in events:
        if e.feature and not e.sandbox and e.started_at.date() <= w.end:
            cost = price(e, Catalog()).cost.total
            f = expected.setdefault(e.feature, {"total_cost": Decimal(0), "calls": 0, "days": {}})
            f["total_cost"] += cost
            f["calls"] += 1
            day = f["days"].setdefault(e.started_at.date().isoformat(), [Decimal(0), 0])
            day[0] += cost
            day[1] += 1

    got = json.loads(encode_json(await analytics.features(store, w)), parse_float=Decimal)
    assert [f["feature"] for f in got] == sorted(expected, key=lambda k: -expected[k]["total_cost"])
    for f in got:
        want = expected[f["feature"]]
        assert (f["total_cost"], f["calls"]) == (want["total_cost"], want["calls"])
        assert f["avg_cost_per_call"] == (want["total_cost"] / want["calls"]).quantize(Decimal("1e-12"))
        assert [(d["date"], d["total_cost"], d["calls"]) for d in f["daily"]] == [
            (day, cost, n) for day, (cost, n) in sorted(want["days"].items())]


async def test_usage_analytics_fold_dates_and_models_as_the_calls_add_up(store: ChdbStore) -> None:
    """Billing usage analytics folds its per (date, model) read into dates and models in the
    store: each date's and each model's figures must be the sum of its calls over every model or
    date, and each key's its own."""
    org = f"org-{uuid.uuid4().hex[:8]}"
    events = make_events(org, 30)
    for i, e in enumerate(events):
        e.started_at = BASE + timedelta(days=i % 3, minutes=i)
        e.model = e.model_requested = ("gpt-4o", "gpt-4o-mini")[i % 2]
        e.key_id = ("key-a", "key-b", "key-c", "key-d")[i % 4]
    await store_calls(store, events)
    body = await billing.analytics(store, org, billing.Range(BASE - timedelta(hours=9), BASE + timedelta(days=3)))

    def folded(label: Callable[[UsageEvent], str]) -> list[tuple[str, Decimal, int, int, int]]:
        out: dict[str, list[Any]] = {}
        for e in events:
            f = out.setdefault(label(e), [Decimal(0), 0, 0, 0])
            for n, v in enumerate((price(e, Catalog()).cost.total, 1, e.input_tokens, e.output_tokens)):
                f[n] += v
        return [(k, *v) for k, v in sorted(out.items())]  # type: ignore[misc]

    def listed(rows: list[dict[str, Any]], label: str) -> list[tuple[str, Decimal, int, int, int]]:
        return [(r[label], r["costUsd"], r["requests"], r["inputTokens"], r["outputTokens"]) for r in rows]

    assert listed(body["byDate"], "date") == folded(lambda e: e.started_at.date().isoformat())
    assert listed(body["byModel"], "model") == folded(lambda e: e.model)
    assert listed(body["byApiKey"], "keyId") == folded(lambda e: e.key_id)
    assert body["totalCostUsd"] == expected_total(events)


async def test_select_json_writes_exact_money_as_numbers(store: ChdbStore) -> None:
    """The store's own JSON, sent to clients as it is, must read as the query service's encoder
    writes money: exact numbers, no trailing zeros of the storage scale, 64-bit counts as numbers."""
    body = await store.select_json(
        "SELECT toDecimal128('0.007250000000', 12) AS cost, toDecimal128('5', 12) AS whole, toUInt64(18446744073709551615) AS n,"
        " map('gpt-4o', toDecimal128('1.5', 12)) AS models")
    assert body.replace(b"\n", b"") == b'[{"cost":0.00725,"whole":5,"n":18446744073709551615,"models":{"gpt-4o":1.5}}]'
    assert json.loads(await store.select_json("SELECT 1 AS x WHERE 0")) == []


async def test_every_rollup_read_keeps_to_the_provider_and_leaves_sandbox_calls_out_unless_asked(store: ChdbStore) -> None:
    """The window's provider and sandbox filters are written into each statement only when they
    filter (``Window.where``): every reader must count exactly the calls they select. Six calls:
    three OpenAI, two Anthropic, one OpenAI in the sandbox."""
    org = f"org-{uuid.uuid4().hex[:8]}"
    events = make_events(org, 6)
    for i, e in enumerate(events):
        e.customer_id, e.feature, e.tags, e.prompt_key = "acme", "chat", ("env:prod",), "p"
        if i in (3, 4):
            e.provider, e.model, e.model_requested = "anthropic", "claude-sonnet-4-20250514", "claude-sonnet-4-20250514"
        e.sandbox = i == 5
    await store_calls(store, events)

    async def calls_per_reader(w: Window) -> dict[str, int]:
        customers, _ = await analytics.customers(store, w, "cost", "desc", 10, 1)
        cross = json.loads(await analytics.customer_by_feature(store, w))
        return {
            "monthly": (await aggregations.monthly(store, w))["request_count"],
            "by-prompt": sum(p["request_count"] for p in (await aggregations.by_prompt(store, w))["prompts"]),
            "by-team": sum(t["request_count"] for t in (await aggregations.by_team(store, LabelCache(store), w))["teams"]),
            "versions": sum(v["request_count"] for v in (await aggregations.version_comparison(store, w, "p"))["versions"]),
            "by-key": sum(k["calls"] for k in await analytics.by_key(store, LabelCache(store), w)),
            "by-tag": sum(t["calls"] for t in await analytics.by_tag(store, w) if t["tag"] == "env:prod"),
            "daily": sum(d["calls"] for d in await analytics.daily(store, w)),
            "customers": sum(c["calls"] for c in customers),
            "customer": (await analytics.customer(store, w, "acme"))["calls"],
            "features": sum(f["calls"] for f in await analytics.features(store, w)),
            "by-customer": sum(int(r["calls"]) for r in cross),
        }

    day = BASE.date()
    for provider, include_sandbox, expected in (("", False, 5), ("", True, 6), ("openai", False, 3),
                                                ("openai", True, 4), ("anthropic", False, 2), ("anthropic", True, 2),
                                                ("mistral", True, 0)):
        counts = await calls_per_reader(Window(org, day, day, provider, include_sandbox))
        assert counts == dict.fromkeys(counts, expected), (provider, include_sandbox, counts)
