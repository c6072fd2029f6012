"""HTTP handlers of customer, feature, key, tag and daily analytics, and the usage export."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from typing import Annotated, Any

from litestar import Request, Response, get
from litestar.params import Parameter
from litestar.response import Stream

from services.query import analytics, spend
from services.query.aggregations import Window
from services.query.auth import Principal
from services.query.params import bad, pagination, positive_int, time_range
from services.query.responses import encode_json, labels_of, store_of

_Date = Annotated[str | None, Parameter(description="YYYY-MM-DD (whole day, UTC) or ISO 8601")]



@get("/api/customers")
async def list_customers(request: Request, span: Window, sort: str = "cost", order: str = "desc",
                         limit: int = 100, page: int = 1) -> dict[str, Any]:
    """Customers (``x-customer-id``) with their total cost and calls."""
    if sort not in ("cost", "calls", "name"):
        raise bad("sort", "expected cost, calls or name")
    if order not in ("asc", "desc"):
        raise bad("order", "expected asc or desc")
    positive_int(limit, "limit", 1, 1000)
    positive_int(page, "page", 1, 10_000_000)
    rows, total = await analytics.customers(store_of(request), span, sort, order, limit, page)  # type: ignore[arg-type]
    return {"customers": rows, "pagination": pagination(page, limit, total)}


@get("/api/customers/{customer_id:str}")
async def customer_detail(request: Request, principal: Principal, span: Window, customer_id: str,
                          limit: int = 50, page: int = 1) -> dict[str, Any]:
    """A customer's total cost and calls, most used models, daily trend and its calls (paginated)."""
    positive_int(limit, "limit", 1, 500)
    positive_int(page, "page", 1, 10_000_000)
    detail, rows, total = await analytics.customer_with_calls(store_of(request), span, customer_id, limit, page)
    names = await labels_of(request).of_rows(principal.org_id, rows)
    detail["calls_page"] = {"data": [spend.log_object(x, names.masked_keys, names.team_names) for x in rows],
                            "pagination": pagination(page, limit, total)}
    return detail


@get("/api/features")
async def list_features(request: Request, span: Window) -> dict[str, Any]:
    """Per feature (``x-feature``): total cost, calls, average cost per call, daily trend."""
    return {"features": await analytics.features(store_of(request), span)}


@get("/api/features/by-customer")
async def features_by_customer(request: Request, span: Window) -> Any:
    """The customer × feature cross table: ``{"rows": [{customer_id, feature, total_cost, calls}]}``
    (the rows as the store wrote them)."""
    return b'{"rows":' + await analytics.customer_by_feature(store_of(request), span) + b"}"


@get("/api/aggregations/by-key")
async def by_key(request: Request, span: Window) -> dict[str, Any]:
    return {"keys": await analytics.by_key(store_of(request), labels_of(request), span)}


@get("/api/aggregations/by-tag")
async def by_tag(request: Request, span: Window) -> dict[str, Any]:
    return {"tags": await analytics.by_tag(store_of(request), span)}


@get("/api/aggregations/daily")
async def daily(request: Request, span: Window) -> dict[str, Any]:
    return {"days": await analytics.daily(store_of(request), span)}


EXPORT_COLUMNS = ["request_id", "startTime", "endTime", "provider", "model", "call_type", "team_id", "team_name",
                  "key_id", "api_key", "customer_id", "feature", "user", "prompt_key", "prompt_version",
                  "prompt_tokens", "completion_tokens", "cache_read_tokens", "cache_write_tokens",
                  "reasoning_tokens", "spend", "status", "http_status", "pricing_status", "tags"]


@get("/api/export")
async def export(request: Request, principal: Principal, start: _Date = None, end: _Date = None,
                 format: str = "csv", model: str = "", customer: str = "", feature: str = "",
                 team: str = "") -> Response:
    """Every call in the window matching the filters, as CSV or JSON lines, streamed."""
    if format not in ("csv", "json"):
        raise bad("format", "expected csv or json")
    store = store_of(request)
    r = time_range(start, end, names=("start", "end"))
    labels = labels_of(request)
    batches = analytics.export_rows(store, principal.org_id, r, model=model, customer=customer, feature=feature, team=team)

    async def log_objects() -> AsyncIterator[list[dict[str, Any]]]:
        """Each batch's calls as log objects, named with the labels of the keys and teams in it
        (a key made since the export began, by another replica too, is named as well)."""
        async for rows in batches:
            names = await labels.of_rows(principal.org_id, rows)
            yield [spend.log_object(x, names.masked_keys, names.team_names) for x in rows]

    async def as_json() -> AsyncIterator[bytes]:
        async for objs in log_objects():
            yield b"".join(encode_json(obj) + b"\n" for obj in objs)

    async def as_csv() -> AsyncIterator[bytes]:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(EXPORT_COLUMNS)
        yield buf.getvalue().encode()
        async for objs in log_objects():
            buf.seek(0)
            buf.truncate()
            for obj in objs:
                writer.writerow([";".join(obj[c]) if c == "tags" else obj[c] for c in EXPORT_COLUMNS])
            yield buf.getvalue().encode()

    if format == "json":
        return Stream(as_json(), media_type="application/x-ndjson")
    return Stream(as_csv(), media_type="text/csv; charset=utf-8",
                  headers={"content-disposition": 'attachment; filename="meterline-usage.csv"'})


HANDLERS = [list_customers, customer_detail, list_features, features_by_customer, by_key, by_tag, daily, export]
