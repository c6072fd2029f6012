"""HTTP handlers of the LiteLLM-style spend API and the usage-record reads."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any

import msgspec
from litestar import Request, get, post
from litestar.params import Parameter

from services.common import tokens
from services.gateway.usage import anthropic_usage, openai_usage
from services.pricer import state
from services.pricer.catalog import provider_of
from services.pricer.pricing import price
from services.query import records, spend
from services.query.aggregations import money
from services.query.auth import Principal
from services.query.keys import hash_key
from services.query.params import bad, positive_int, time_range
from services.query.responses import labels_of, store_of
from services.store import Store
from schemas.events import UsageEvent

_Date = Annotated[str | None, Parameter(description="YYYY-MM-DD (whole day, UTC) or ISO 8601")]



async def _key_id(store: Store, org_id: str, api_key: str | None) -> str | None:
    """``api_key`` may be a key id, the full key, or its SHA-256: never stored as given."""
    if not api_key:
        return None
    if api_key.startswith("key_"):
        return api_key
    digest = hash_key(api_key) if api_key.startswith("mtl_") else api_key.lower()
    rows = await store.select(
        "SELECT key_id FROM api_keys FINAL WHERE org_id = {org:String} AND key_hash = {h:String}",
        {"org": org_id, "h": digest},
    )
    return rows[0]["key_id"] if rows else "-"  # an unknown key matches nothing


@get("/spend/logs")
async def spend_logs(
    request: Request, principal: Principal, request_id: str | None = None, api_key: str | None = None,
    user_id: str | None = None, start_date: _Date = None, end_date: _Date = None, summarize: bool = True,
    limit: Annotated[int, Parameter(ge=1, le=10_000)] = 1000,
) -> Any:
    """Spend logs. With both dates and ``summarize`` (default): spend per date, with spend per
    model, key and user. Otherwise the individual log objects (newest first)."""
    store = store_of(request)
    key_id = await _key_id(store, principal.org_id, api_key)
    dated = bool(start_date and end_date)
    r = time_range(start_date, end_date) if dated else None
    if dated and summarize:
        assert r is not None
        return await spend.logs_by_date(store, principal.org_id, r, key_id=key_id, user=user_id)
    rows = await spend.logs(store, principal.org_id, r, request_id=request_id, key_id=key_id, user=user_id, limit=limit)
    names = await labels_of(request).of_rows(principal.org_id, rows)
    return [spend.log_object(row, names.masked_keys, names.team_names) for row in rows]


@get("/spend/tags")
async def spend_tags(request: Request, principal: Principal, start_date: _Date = None, end_date: _Date = None) -> Any:
    """Spend and request count per tag: feature tags, ``x-feature`` and ``key:value`` tags."""
    return await spend.tags(store_of(request), principal.org_id, time_range(start_date, end_date))


class CalculateIn(msgspec.Struct, forbid_unknown_fields=False):
    model: str | None = None
    messages: list[Any] | None = None
    system: Any = None
    completion_response: dict[str, Any] | None = None
    provider: str | None = None


@post("/spend/calculate", status_code=200)
async def spend_calculate(request: Request, principal: Principal, data: CalculateIn) -> dict[str, Any]:
    """The cost of a call: estimated before making it (``model`` + ``messages``: prompt tokens
    counted with the model's BPE encoding), or exact from a response object's usage."""
    estimate = data.completion_response is None
    if estimate:
        if not data.model or data.messages is None:
            raise bad("model", "send model and messages, or completion_response")
        await tokens.prepare(data.model)  # the first estimate loads the tokenizer, off the event loop
        model, usage_in, usage_out, cached, written = data.model, tokens.estimate_prompt_tokens(data.model, data.messages, data.system), 0, 0, 0
        provider = data.provider or provider_of(model)
    else:
        body = data.completion_response
        anthropic = body.get("type") == "message" or data.provider == "anthropic"
        usage = anthropic_usage(body) if anthropic else openai_usage(body)
        if not usage.reported:
            raise bad("completion_response", "carries no usage to price")
        model = usage.model or data.model or ""
        usage_in, usage_out, cached, written = usage.input, usage.output, usage.cache_read, usage.cache_write
        provider = "anthropic" if anthropic else (data.provider or provider_of(model) or "openai")
    if provider not in ("openai", "anthropic"):
        raise bad("model", f"model {model!r} has no known price")
    event = UsageEvent(event_id="00000000-0000-0000-0000-000000000000", request_id="", org_id=principal.org_id,
                       provider=provider, route="spend/calculate", model=model, started_at=datetime.now(timezone.utc),
                       input_tokens=usage_in, output_tokens=usage_out, cache_read_tokens=cached, cache_write_tokens=written)
    priced = price(event, await state.load_catalog(store_of(request)))
    if priced.status != "priced":
        raise bad("model", f"model {model!r} has no known price" if priced.status == "unknown_model" else priced.status)
    return {
        "cost": money(priced.cost.total),
        "model": model,
        "provider": provider,
        "estimate": estimate,
        "prompt_tokens": usage_in,
        "completion_tokens": usage_out,
        "cached_tokens": cached,
        "cache_write_tokens": written,
        "note": "prompt tokens estimated with the model's BPE encoding; output not included" if estimate else "priced from the response's usage",
    }


@get("/v1/usage")
async def usage_records(
    request: Request, principal: Principal, accountId: str | None = None, modelId: str | None = None,
    context: str | None = None, summary: bool = False, limit: int = 1000,
) -> dict[str, Any]:
    """Usage recorded with ``POST /v1/usage/record`` on the gateway, or its summary."""
    positive_int(limit, "limit", 1, 10_000)
    if context not in (None, "", "system", "customer"):
        raise bad("context", "expected system or customer")
    items = await records.records(store_of(request), principal.org_id, account_id=accountId, model_id=modelId,
                                  context=context, limit=limit)
    if summary:
        return {"success": True, "summary": records.summary(items)}
    return {"success": True, "usageRecords": items}


HANDLERS = [spend_logs, spend_tags, spend_calculate, usage_records]
