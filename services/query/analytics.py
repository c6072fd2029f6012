"""Customer, feature, key, tag and daily analytics: named SQL over the daily rollups; a
customer's individual calls and the filtered export read the raw table (by organisation and
time, its primary key)."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Literal

from services.query.aggregations import Window, money
from services.query.params import Range
from services.query.spend import LOG_COLUMNS
from services.store import Store

_FILTER = (
    "org_id = {org:String} AND day BETWEEN {start:Date} AND {end:Date}"
    " AND ({provider:String} = '' OR provider = {provider:String}) AND (NOT sandbox OR {sandbox:UInt8} = 1)"
)
CustomerSort = Literal["cost", "calls", "name"]
_SORT = {"cost": "total_cost", "calls": "calls", "name": "customer_id"}


def _money_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**r, "total_cost": money(Decimal(r["total_cost"])), "calls": int(r["calls"])} for r in rows]


async def customers(store: Store, w: Window, sort: CustomerSort, order: str, limit: int, page: int) -> tuple[list[dict[str, Any]], int]:
    direction = "DESC" if order == "desc" else "ASC"
    rows = await store.select(
        f"SELECT customer_id, sum(total_cost) AS total_cost, sum(request_count) AS calls FROM spend_daily_by_customer"
        f" WHERE {_FILTER} AND customer_id != '' GROUP BY customer_id"
        f" ORDER BY {_SORT[sort]} {direction}, customer_id ASC LIMIT {{limit:UInt32}} OFFSET {{skip:UInt64}}",
        {**w.params(), "limit": limit, "skip": (page - 1) * limit},
    )
    total = await store.select(
        f"SELECT uniqExact(customer_id) AS n FROM spend_daily_by_customer WHERE {_FILTER} AND customer_id != ''", w.params()
    )
    return _money_rows(rows), int(total[0]["n"])


async def customer(store: Store, w: Window, customer_id: str) -> dict[str, Any]:
    params = {**w.params(), "customer": customer_id}
    where = f"{_FILTER} AND customer_id = {{customer:String}}"
    models = await store.select(
        f"SELECT model, sum(total_cost) AS total_cost, sum(request_count) AS calls FROM spend_daily_by_customer"
        f" WHERE {where} GROUP BY model ORDER BY calls DESC, total_cost DESC, model", params)
    daily = await store.select(
        f"SELECT day AS date, sum(total_cost) AS total_cost, sum(request_count) AS calls FROM spend_daily_by_customer"
        f" WHERE {where} GROUP BY day ORDER BY day", params)
    total_cost = sum((Decimal(m["total_cost"]) for m in models), Decimal(0))
    return {
        "customer_id": customer_id,
        "total_cost": money(total_cost),
        "calls": sum(int(m["calls"]) for m in models),
        "top_models": _money_rows(models),
        "daily": _money_rows(daily),
    }


async def customer_calls(store: Store, org_id: str, r: Range, customer_id: str, limit: int, page: int) -> tuple[list[dict[str, Any]], int]:
    params = {"org": org_id, "start": r.start, "end": r.end, "customer": customer_id}
    where = ("org_id = {org:String} AND started_at >= {start:DateTime64(3, 'UTC')} AND started_at < {end:DateTime64(3, 'UTC')}"
             " AND customer_id = {customer:String} AND NOT sandbox")
    rows = await store.select(
        f"SELECT {LOG_COLUMNS} FROM usage_events WHERE {where} ORDER BY started_at DESC, event_id"
        f" LIMIT {{limit:UInt32}} OFFSET {{skip:UInt64}}", {**params, "limit": limit, "skip": (page - 1) * limit})
    total = await store.select(f"SELECT count() AS n FROM usage_events WHERE {where}", params)
    return rows, int(total[0]["n"])


async def features(store: Store, w: Window) -> list[dict[str, Any]]:
    rows = await store.select(
        f"SELECT feature, day, sum(total_cost) AS total_cost, sum(request_count) AS calls FROM spend_daily_by_customer"
        f" WHERE {_FILTER} AND feature != '' GROUP BY feature, day ORDER BY feature, day", w.params())
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        f = out.setdefault(r["feature"], {"feature": r["feature"], "total_cost": Decimal(0), "calls": 0, "daily": []})
        cost, calls = Decimal(r["total_cost"]), int(r["calls"])
        f["total_cost"] += cost
        f["calls"] += calls
        f["daily"].append({"date": r["day"], "total_cost": money(cost), "calls": calls})
    result = []
    for f in sorted(out.values(), key=lambda f: (-f["total_cost"], f["feature"])):
        avg = (f["total_cost"] / f["calls"]).quantize(Decimal("1e-12")) if f["calls"] else Decimal(0)
        result.append({**f, "total_cost": money(f["total_cost"]), "avg_cost_per_call": money(avg)})
    return result


async def _spend_by(store: Store, w: Window, rollup: str, keys: str, order: str, where: str = "") -> list[dict[str, Any]]:
    """Cost and calls from one rollup, grouped by ``keys`` (a column list of that rollup)."""
    rows = await store.select(
        f"SELECT {keys}, sum(total_cost) AS total_cost, sum(request_count) AS calls FROM {rollup}"
        f" WHERE {_FILTER}{where} GROUP BY {keys} ORDER BY {order}", w.params())
    return _money_rows(rows)


async def customer_by_feature(store: Store, w: Window) -> list[dict[str, Any]]:
    return await _spend_by(store, w, "spend_daily_by_customer", "customer_id, feature", "customer_id, feature",
                           " AND (customer_id != '' OR feature != '')")


async def by_key(store: Store, w: Window) -> list[dict[str, Any]]:
    return await _spend_by(store, w, "spend_daily_by_key", "key_id, team_id", "total_cost DESC, key_id")


async def by_tag(store: Store, w: Window) -> list[dict[str, Any]]:
    return await _spend_by(store, w, "spend_daily_by_tag", "tag", "total_cost DESC, tag")


async def daily(store: Store, w: Window) -> list[dict[str, Any]]:
    rows = await _spend_by(store, w, "spend_daily_by_key", "day", "day")
    return [{"date": r.pop("day"), **r} for r in rows]


async def export_rows(store: Store, org_id: str, r: Range, *, model: str, customer: str, feature: str,
                      team: str, batch: int = 5000) -> Any:
    """Every call in the window matching the filters, oldest first, in batches (keyset on the
    primary key, so a large export never re-reads what it has sent)."""
    after_ts, after_id = r.start, ""
    while True:
        rows = await store.select(
            f"SELECT {LOG_COLUMNS} FROM usage_events WHERE org_id = {{org:String}} AND NOT sandbox"
            " AND started_at < {end:DateTime64(3, 'UTC')}"
            " AND (started_at > {after:DateTime64(3, 'UTC')} OR (started_at = {after:DateTime64(3, 'UTC')} AND toString(event_id) > {after_id:String}))"
            " AND ({model:String} = '' OR model = {model:String} OR model_requested = {model:String})"
            " AND ({customer:String} = '' OR customer_id = {customer:String})"
            " AND ({feature:String} = '' OR feature = {feature:String})"
            " AND ({team:String} = '' OR team_id = {team:String})"
            " ORDER BY started_at, toString(event_id) LIMIT {batch:UInt32}",
            {"org": org_id, "end": r.end, "after": after_ts, "after_id": after_id, "model": model,
             "customer": customer, "feature": feature, "team": team, "batch": batch},
        )
        if not rows:
            return
        yield rows
        if len(rows) < batch:
            return
        last = rows[-1]
        after_ts = datetime.fromisoformat(last["started_at"]).replace(tzinfo=timezone.utc)
        after_id = last["event_id"]
