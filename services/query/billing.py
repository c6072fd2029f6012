"""The billing usage export: one line item per kind of token a call used, paginated by page
number without OFFSET scans of the raw table.

How a page is found: ``billing_items_daily`` counts line items per day, so the day a page
starts on is found by summing days (a few hundred rows at most), and the raw table is read
from that day on in primary-key order, skipping only the items of that one day before the page.
Page 10,000 costs what page 1 costs, give or take one day's items.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any, Literal

from services.query.aggregations import money
from services.query.params import Range
from services.query.spend import call_order
from services.store import Store

# One tuple per kind of token, in the order items of a call are listed.
_ITEMS = (
    "arrayFilter(x -> x.2 > 0, ["
    "('input', toInt64(input_tokens) - toInt64(cache_read_tokens) - toInt64(cache_write_tokens), input_cost),"
    " ('cached_input', toInt64(cache_read_tokens), cache_read_cost),"
    " ('cache_write', toInt64(cache_write_tokens), cache_write_cost),"
    " ('output', toInt64(output_tokens), output_cost)])"
)
# The same count per call as billing_items_daily_mv, for the partial days at a window's edges.
_ITEM_COUNT = (
    "(input_tokens > cache_read_tokens + cache_write_tokens) + (cache_read_tokens > 0)"
    " + (cache_write_tokens > 0) + (output_tokens > 0)"
)
NOTES = {
    "input": "input tokens, not cached",
    "cached_input": "input tokens read from the prompt cache",
    "cache_write": "input tokens written to the prompt cache",
    "output": "output tokens, reasoning included",
}


@dataclass(frozen=True)
class Page:
    org_id: str
    window: Range
    page: int
    limit: int
    order: Literal["asc", "desc"]


def _midnight(d: date) -> datetime:
    return datetime.combine(d, time(), tzinfo=timezone.utc)


async def items_per_day(store: Store, org_id: str, r: Range) -> dict[date, int]:
    """Line items per day of the window: whole days from the rollup, edge days cut by a
    timestamp counted from the raw table (one day's rows each)."""
    counts: dict[date, int] = {}
    rows = await store.select(
        "SELECT day, sum(items) AS n FROM billing_items_daily WHERE org_id = {org:String}"
        " AND day BETWEEN {first:Date} AND {last:Date} AND NOT sandbox GROUP BY day",
        {"org": org_id, "first": r.first_day, "last": r.last_day},
    )
    for row in rows:
        counts[date.fromisoformat(row["day"])] = int(row["n"])
    edges = {r.first_day} if r.start != _midnight(r.first_day) else set()
    if r.end != _midnight(r.last_day) + timedelta(days=1):
        edges.add(r.last_day)
    for day in edges:
        lo = max(r.start, _midnight(day))
        hi = min(r.end, _midnight(day) + timedelta(days=1))
        partial = await store.select(
            f"SELECT sum({_ITEM_COUNT}) AS n FROM usage_events WHERE org_id = {{org:String}} AND NOT sandbox"
            " AND started_at >= {lo:DateTime64(3, 'UTC')} AND started_at < {hi:DateTime64(3, 'UTC')}",
            {"org": org_id, "lo": lo, "hi": hi},
        )
        counts[day] = int(partial[0]["n"] or 0)
    return {d: n for d, n in counts.items() if n}


def locate(counts: dict[date, int], offset: int, order: str) -> tuple[date, int] | None:
    """The day holding item number ``offset`` (0-based, in sort order) and how many of that
    day's items come before it. Pure."""
    before = 0
    for day in sorted(counts, reverse=order == "desc"):
        if before + counts[day] > offset:
            return day, offset - before
        before += counts[day]
    return None


async def page(store: Store, p: Page) -> tuple[list[dict[str, Any]], int]:
    """The page's line items and the window's total item count."""
    counts = await items_per_day(store, p.org_id, p.window)
    total = sum(counts.values())
    found = locate(counts, (p.page - 1) * p.limit, p.order)
    if found is None:
        return [], total
    day, skip = found
    if p.order == "asc":
        lo, hi = max(p.window.start, _midnight(day)), p.window.end
    else:
        lo, hi = p.window.start, min(p.window.end, _midnight(day) + timedelta(days=1))
    direction = "ASC" if p.order == "asc" else "DESC"
    rows = await store.select(
        f"SELECT started_at, toString(event_id) AS event_id, request_id, provider, model, latency_ms,"
        f" input_tokens, output_tokens, pricing_status, item.1 AS kind, item.2 AS amount, item.3 AS cost, n"
        f" FROM usage_events ARRAY JOIN {_ITEMS} AS item, arrayEnumerate({_ITEMS}) AS n"
        f" WHERE org_id = {{org:String}} AND NOT sandbox"
        f" AND started_at >= {{lo:DateTime64(3, 'UTC')}} AND started_at < {{hi:DateTime64(3, 'UTC')}}"
        f" ORDER BY {call_order(direction)}, n ASC"
        f" LIMIT {{limit:UInt32}} OFFSET {{skip:UInt64}}",
        {"org": p.org_id, "lo": lo, "hi": hi, "limit": p.limit, "skip": skip},
    )
    return [entry(r) for r in rows], total


def entry(row: dict[str, Any]) -> dict[str, Any]:
    amount = int(row["amount"])
    cost = Decimal(row["cost"])
    return {
        "timestamp": row["started_at"].replace(" ", "T") + "Z",
        "sku": f"{row['provider']}/{row['model']}/{row['kind']}",
        "pricePerUnitUsd": money(cost / amount) if amount else Decimal(0),
        "unit": "token",
        "amount": amount,
        "costUsd": money(cost),
        "currency": "USD",
        "notes": NOTES[row["kind"]] + ("" if row["pricing_status"] == "priced" else f"; {row['pricing_status']}"),
        "inferenceDetails": {
            "requestId": row["request_id"],
            "inferenceExecutionTime": float(row["latency_ms"]) / 1000,
            "promptTokens": int(row["input_tokens"]),
            "completionTokens": int(row["output_tokens"]),
        },
    }


CSV_COLUMNS = ["timestamp", "sku", "pricePerUnitUsd", "unit", "amount", "costUsd", "currency", "notes",
               "requestId", "inferenceExecutionTime", "promptTokens", "completionTokens"]


def csv_row(e: dict[str, Any]) -> list[Any]:
    d = e["inferenceDetails"]
    return [e["timestamp"], e["sku"], e["pricePerUnitUsd"], e["unit"], e["amount"], e["costUsd"], e["currency"],
            e["notes"], d["requestId"], d["inferenceExecutionTime"], d["promptTokens"], d["completionTokens"]]


async def analytics(store: Store, org_id: str, r: Range) -> dict[str, Any]:
    """The window aggregated by date, by model and by API key, from the daily rollup. Two
    statements read at once (the store runs them side by side) rather than one UNION ALL of both:
    at 10M calls over 30 days, 33 -> 22 ms in the engine alone, 47.5 -> 44.1 ms p50 over HTTP.

    The first reads per (date, model), as the rollup's projection keeps it, and folds those rows
    into dates and models in the store (grouping sets over the read), so a figure arrives here
    once per date and once per model instead of once per pair, each added up in Decimals here.
    Side by side over HTTP on a 10M-call store, identical answers: 90 days p50 45.6 -> 39.3 ms,
    p95 51.6 -> 46.2."""
    params = {"org": org_id, "first": r.first_day, "last": r.last_day}
    where = "org_id = {org:String} AND day BETWEEN {first:Date} AND {last:Date} AND NOT sandbox"
    sums = "sum(total_cost) AS cost, sum(request_count) AS n, sum(input_tokens) AS i, sum(output_tokens) AS o"
    by_date_or_model, by_key = await asyncio.gather(
        store.select("SELECT grouping(date) = 0 AS per_date, if(per_date, date, model) AS name, sum(cost) AS cost,"
                     " sum(n) AS n, sum(i) AS i, sum(o) AS o FROM ("
                     f"SELECT toString(day) AS date, toString(model) AS model, {sums}"
                     f" FROM spend_daily_by_key WHERE {where} GROUP BY day, model)"
                     " GROUP BY GROUPING SETS ((date), (model))", params),
        store.select(f"SELECT toString(key_id) AS name, {sums}"
                     f" FROM spend_daily_by_key WHERE {where} GROUP BY key_id", params),
    )
    groups: dict[str, dict[str, dict[str, Any]]] = {"date": {}, "model": {}, "key": {x["name"]: x for x in by_key}}
    for x in by_date_or_model:
        groups["date" if x["per_date"] else "model"][x["name"]] = x

    def listed(by: str, label: str) -> list[dict[str, Any]]:
        return [{label: k, "costUsd": money(Decimal(x["cost"])), "requests": int(x["n"]), "inputTokens": int(x["i"]),
                 "outputTokens": int(x["o"])} for k, x in sorted(groups[by].items())]

    by_date = listed("date", "date")
    return {
        "startDate": r.start.isoformat().replace("+00:00", "Z"),
        "endDate": r.end.isoformat().replace("+00:00", "Z"),
        "currency": "USD",
        "totalCostUsd": money(sum((x["costUsd"] for x in by_date), Decimal(0))),
        "byDate": by_date,
        "byModel": listed("model", "model"),
        "byApiKey": listed("key", "keyId"),
    }
