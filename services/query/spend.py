"""The LiteLLM-style spend API's named statements: spend logs, spend per tag, and the cost of a
call before or after making it."""

from __future__ import annotations

from datetime import datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

from services.query.aggregations import money
from services.query.filters import optional
from services.query.params import Range
from services.store import Store

LOG_COLUMNS = (
    "toString(event_id) AS event_id, request_id, route, key_id, team_id, user_id, customer_id, model, provider,"
    " input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, total_cost,"
    " started_at, latency_ms, status, http_status, pricing_status, feature_tags, tags, feature, prompt_key,"
    " prompt_version, sandbox"
)


def call_order(direction: str) -> str:
    """``ORDER BY`` calls by time, ties by id, both ``ASC`` or both ``DESC``.

    The tie is broken by the table's own ``event_id`` (a UUID), never by the string that
    ``LOG_COLUMNS`` also names ``event_id``: this is then the primary key's order (org_id,
    started_at, event_id) read forwards or backwards, so ClickHouse reads the parts in order and
    stops once the page is full. Broken by the string, or in the opposite direction, it sorts
    every call of the range first: a page of one customer's calls on one day of 10M calls went
    from 17 to 8 ms."""
    return f"started_at {direction}, usage_events.event_id {direction}"


NEWEST_FIRST = call_order("DESC")


def log_object(row: dict[str, Any], keys: dict[str, str], teams: dict[str, str]) -> dict[str, Any]:
    start = datetime.fromisoformat(row["started_at"]).replace(tzinfo=timezone.utc)
    end = start + timedelta(milliseconds=float(row["latency_ms"]))
    return {
        "request_id": row["request_id"],
        "event_id": row["event_id"],
        "call_type": row["route"],
        "api_key": keys.get(row["key_id"], ""),  # masked: the key itself is never stored
        "key_id": row["key_id"],
        "team_id": row["team_id"],
        "team_name": teams.get(row["team_id"], ""),
        "user": row["user_id"],
        "customer_id": row["customer_id"],
        "model": row["model"],
        "provider": row["provider"],
        "prompt_tokens": int(row["input_tokens"]),
        "completion_tokens": int(row["output_tokens"]),
        "total_tokens": int(row["input_tokens"]) + int(row["output_tokens"]),
        "cache_read_tokens": int(row["cache_read_tokens"]),
        "cache_write_tokens": int(row["cache_write_tokens"]),
        "reasoning_tokens": int(row["reasoning_tokens"]),
        "spend": money(Decimal(row["total_cost"])),
        "startTime": start.isoformat().replace("+00:00", "Z"),
        "endTime": end.isoformat().replace("+00:00", "Z"),
        "status": row["status"],
        "http_status": int(row["http_status"]),
        "pricing_status": row["pricing_status"],
        "tags": row["feature_tags"] + row["tags"] + ([row["feature"]] if row["feature"] else []),
        "feature": row["feature"],
        "prompt_key": row["prompt_key"],
        "prompt_version": int(row["prompt_version"]) or None,
        "sandbox": bool(row["sandbox"]),
    }


def _filters(org_id: str, r: Range | None, request_id: str | None, key_id: str | None, user: str | None) -> tuple[str, dict[str, Any]]:
    where = "org_id = {org:String} AND NOT sandbox"
    params: dict[str, Any] = {"org": org_id}
    if r is not None:
        where += " AND started_at >= {start:DateTime64(3, 'UTC')} AND started_at < {end:DateTime64(3, 'UTC')}"
        params.update(start=r.start, end=r.end)
    filters, filter_params = optional((
        ("request_id = {request_id:String}", "request_id", request_id),
        ("key_id = {key_id:String}", "key_id", key_id),  # never empty: an unknown key is "-"
        ("user_id = {user:String}", "user", user),
    ))
    return where + filters, {**params, **filter_params}


async def logs(store: Store, org_id: str, r: Range | None, *, request_id: str | None, key_id: str | None,
               user: str | None, limit: int) -> list[dict[str, Any]]:
    where, params = _filters(org_id, r, request_id, key_id, user)
    return await store.select(
        f"SELECT {LOG_COLUMNS} FROM usage_events WHERE {where} ORDER BY {NEWEST_FIRST} LIMIT {{limit:UInt32}}",
        {**params, "limit": limit},
    )


# The summary's day: one object per date, folded in the store from rows of (group, day, name,
# cost, calls), where group 0 are the day's models (every call is in exactly one: the day's
# totals), 1 its keys and 2 its users. Written by the store as JSON, so a summary of hundreds of
# thousands of (day, user) entries is never taken apart into Python objects.
_SUMMARY_DAY = (
    "SELECT toString(day) AS startTime, sumIf(cost, g = 0) AS spend, sumIf(calls, g = 0) AS request_count,"
    " mapFromArrays(groupArrayIf(name, g = 0), groupArrayIf(cost, g = 0)) AS models,"
    " mapFromArrays(groupArrayIf(name, g = 1), groupArrayIf(cost, g = 1)) AS api_keys,"
    " mapFromArrays(groupArrayIf(name, g = 2), groupArrayIf(cost, g = 2)) AS users"
    " FROM ({parts}) GROUP BY day ORDER BY day"
)


def _whole_days(r: Range) -> bool:
    return r.start.timetz() == r.end.timetz() == time(tzinfo=timezone.utc)


async def logs_by_date(store: Store, org_id: str, r: Range, *, key_id: str | None, user: str | None) -> bytes:
    """Spend per date, and per model, key and user within each date, as a JSON array.

    Unfiltered over whole days it reads the per-day projections of ``usage_events`` (migration
    0007), so its cost follows the size of the answer, not the number of calls. Filtered by key or
    user, or over part of a day, it reads the calls themselves, grouped by (date, model), (date,
    key) and (date, user) separately: grouping by all four at once returns a row per combination,
    which grows with traffic far faster than the answer does. Both read ``usage_events``, so a
    day's spend is always the sum of its models, of its keys and of its users."""
    if key_id is None and not user and _whole_days(r):
        days = "org_id = {org:String} AND NOT sandbox AND toDate(started_at) BETWEEN {first:Date} AND {last:Date}"
        # one statement per projection: ClickHouse matches a projection to a plain GROUP BY only
        parts = " UNION ALL ".join(
            f"SELECT {g} AS g, toDate(started_at) AS day, toString({column}) AS name, sum(total_cost) AS cost,"
            f" count() AS calls FROM usage_events WHERE {days} GROUP BY day, {column}"
            for g, column in enumerate(("model", "key_id", "user_id"))
        )
        params = {"org": org_id, "first": r.first_day, "last": r.last_day}
    else:
        where, params = _filters(org_id, r, None, key_id, user)
        # grouping(): a bit per column (model, key_id, user_id), set where the row is NOT grouped by it
        parts = (
            "SELECT multiIf(g = 0b011, 0, g = 0b101, 1, 2) AS g, day, name, cost, calls FROM ("
            " SELECT toDate(started_at) AS day, grouping(model, key_id, user_id) AS g,"
            " multiIf(g = 0b011, toString(model), g = 0b101, key_id, user_id) AS name,"
            f" sum(total_cost) AS cost, count() AS calls FROM usage_events WHERE {where}"
            " GROUP BY GROUPING SETS ((day, model), (day, key_id), (day, user_id)))"
        )
    return await store.select_json(_SUMMARY_DAY.replace("{parts}", parts), params)


async def tags(store: Store, org_id: str, r: Range) -> list[dict[str, Any]]:
    rows = await store.select(
        "SELECT tag, sum(total_cost) AS spend, sum(request_count) AS n FROM spend_daily_by_tag"
        " WHERE org_id = {org:String} AND day BETWEEN {first:Date} AND {last:Date} AND NOT sandbox"
        " GROUP BY tag ORDER BY spend DESC, tag",
        {"org": org_id, "first": r.first_day, "last": r.last_day},
    )
    return [{"individual_request_tag": t["tag"], "tag": t["tag"], "total_spend": money(Decimal(t["spend"])),
             "log_count": int(t["n"])} for t in rows]
