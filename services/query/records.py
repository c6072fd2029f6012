"""Usage recorded through ``POST /v1/usage/record`` (route ``usage/record``), read back."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from services.query.aggregations import money
from services.query.filters import optional
from services.query.spend import NEWEST_FIRST
from services.store import Store


def _context(tags: list[str]) -> str:
    return next((t.split(":", 1)[1] for t in tags if t.startswith("context:")), "")


def _usage_type(tags: list[str]) -> str:
    return next((t.split(":", 1)[1] for t in tags if t.startswith("usage_type:")), "")


async def records(store: Store, org_id: str, *, account_id: str | None, model_id: str | None,
                  context: str | None, limit: int) -> list[dict[str, Any]]:
    filters, params = optional((
        ("customer_id = {account:String}", "account", account_id),
        ("model = {model:String}", "model", model_id),
        ("has(tags, concat('context:', {context:String}))", "context", context),
    ))
    rows = await store.select(
        "SELECT toString(event_id) AS id, request_id, customer_id, model, provider, tags, input_tokens,"
        " output_tokens, cache_read_tokens, total_cost, pricing_status, started_at FROM usage_events"
        f" WHERE org_id = {{org:String}} AND route = 'usage/record'{filters}"
        f" ORDER BY {NEWEST_FIRST} LIMIT {{limit:UInt32}}",
        {"org": org_id, "limit": limit, **params},
    )
    return [
        {
            "id": r["id"],
            "transactionId": r["request_id"],
            "accountId": r["customer_id"] or None,
            "context": _context(r["tags"]),
            "usageType": _usage_type(r["tags"]),
            "modelId": r["model"],
            "provider": r["provider"],
            "inputTokens": int(r["input_tokens"]),
            "outputTokens": int(r["output_tokens"]),
            "cachedTokens": int(r["cache_read_tokens"]),
            "costUsd": money(Decimal(r["total_cost"])),
            "pricingStatus": r["pricing_status"],
            "timestamp": r["started_at"].replace(" ", "T") + "Z",
        }
        for r in rows
    ]


def summary(items: list[dict[str, Any]]) -> dict[str, Any]:
    by_context: dict[str, dict[str, Any]] = {}
    by_model: dict[str, dict[str, Any]] = {}
    for item in items:
        for table, key in ((by_context, item["context"]), (by_model, item["modelId"])):
            entry = table.setdefault(key, {"costUsd": Decimal(0), "count": 0})
            entry["costUsd"] += item["costUsd"]
            entry["count"] += 1
    return {
        "totalCostUsd": money(sum((i["costUsd"] for i in items), Decimal(0))),
        "totalInputTokens": sum(i["inputTokens"] for i in items),
        "totalOutputTokens": sum(i["outputTokens"] for i in items),
        "byContext": {k: {**v, "costUsd": money(v["costUsd"])} for k, v in by_context.items()},
        "byModel": {k: {**v, "costUsd": money(v["costUsd"])} for k, v in by_model.items()},
    }
