"""The LiteLLM-style spend API's named statements: spend logs, spend per tag, and the cost of a
call before or after making it."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from services.query.aggregations import money
from services.query.params import Range
from services.store import Store

LOG_COLUMNS = (
    "toString(event_id) AS event_id, request_id, route, key_id, team_id, user_id, customer_id, model, provider,"
    " input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, total_cost,"
    " started_at, latency_ms, status, http_status, pricing_status, feature_tags, tags, feature, prompt_key,"
    " prompt_version, sandbox"
)


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
    where = ["org_id = {org:String}", "NOT sandbox"]
    params: dict[str, Any] = {"org": org_id}
    if r is not None:
        where.append("started_at >= {start:DateTime64(3, 'UTC')} AND started_at < {end:DateTime64(3, 'UTC')}")
        params.update(start=r.start, end=r.end)
    if request_id:
        where.append("request_id = {request_id:String}")
        params["request_id"] = request_id
    if key_id is not None:
        where.append("key_id = {key_id:String}")
        params["key_id"] = key_id
    if user:
        where.append("user_id = {user:String}")
        params["user"] = user
    return " AND ".join(where), params


async def logs(store: Store, org_id: str, r: Range | None, *, request_id: str | None, key_id: str | None,
               user: str | None, limit: int) -> list[dict[str, Any]]:
    where, params = _filters(org_id, r, request_id, key_id, user)
    return await store.select(
        f"SELECT {LOG_COLUMNS} FROM usage_events WHERE {where} ORDER BY started_at DESC, event_id LIMIT {{limit:UInt32}}",
        {**params, "limit": limit},
    )


async def logs_by_date(store: Store, org_id: str, r: Range, *, key_id: str | None, user: str | None) -> list[dict[str, Any]]:
    """Spend per date, and per model, key and user within each date. Grouped by (date, model),
    (date, key) and (date, user) separately: grouping by all four at once returns a row per
    combination, which grows with traffic far faster than the answer does."""
    where, params = _filters(org_id, r, None, key_id, user)
    rows = await store.select(
        f"SELECT toDate(started_at) AS date, model, key_id, user_id, grouping(model, key_id, user_id) AS g,"
        f" sum(total_cost) AS spend, count() AS n FROM usage_events WHERE {where}"
        f" GROUP BY GROUPING SETS ((date, model), (date, key_id), (date, user_id)) ORDER BY date",
        params,
    )
    days: dict[str, dict[str, Any]] = {}
    for row in rows:
        day = days.setdefault(row["date"], {"startTime": row["date"], "spend": Decimal(0), "request_count": 0,
                                            "models": {}, "api_keys": {}, "users": {}})
        spend = money(Decimal(row["spend"]))
        g = int(row["g"])  # a bit per column (model, key_id, user_id), set where the row is NOT grouped by it
        if g == 0b011:  # every call is in exactly one (date, model) group: the day's totals
            day["spend"] += spend
            day["request_count"] += int(row["n"])
            day["models"][row["model"]] = spend
        elif g == 0b101:
            day["api_keys"][row["key_id"]] = spend
        else:
            day["users"][row["user_id"]] = spend
    for day in days.values():
        day["spend"] = money(day["spend"])
    return list(days.values())


async def tags(store: Store, org_id: str, r: Range) -> list[dict[str, Any]]:
    rows = await store.select(
        "SELECT tag, sum(total_cost) AS spend, sum(request_count) AS n FROM spend_daily_by_tag"
        " WHERE org_id = {org:String} AND day BETWEEN {first:Date} AND {last:Date} AND NOT sandbox"
        " GROUP BY tag ORDER BY spend DESC, tag",
        {"org": org_id, "first": r.first_day, "last": r.last_day},
    )
    return [{"individual_request_tag": t["tag"], "tag": t["tag"], "total_spend": money(Decimal(t["spend"])),
             "log_count": int(t["n"])} for t in rows]
