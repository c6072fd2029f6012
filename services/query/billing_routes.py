"""HTTP handlers of the billing usage export and its analytics."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from typing import Annotated, Any

from litestar import Request, Response, get
from litestar.params import Parameter
from litestar.response import Stream

from services.query import billing
from services.query.auth import Principal
from services.query.params import bad, pagination, positive_int, time_range
from services.query.responses import MoneyResponse, store_of

# ISO 4217 codes we recognise. Spend is kept in USD only: another known currency is a valid
# question with an empty answer, an unknown code is a mistake.
KNOWN_CURRENCIES = frozenset(
    "USD EUR GBP JPY CHF CAD AUD NZD CNY HKD SGD INR KRW SEK NOK DKK PLN CZK HUF BRL MXN ZAR TRY ILS AED SAR"
    " TWD THB IDR MYR PHP VND RUB UAH CLP COP PEN ARS EGP NGN KES".split()
)

_Date = Annotated[str | None, Parameter(description="YYYY-MM-DD (whole day, UTC) or ISO 8601")]



def _check_currency(currency: str) -> str:
    code = currency.upper()
    if code not in KNOWN_CURRENCIES:
        raise bad("currency", f"unknown currency {currency!r}")
    return code


@get("/api/v1/billing/usage")
async def billing_usage(
    request: Request, principal: Principal, startDate: _Date = None, endDate: _Date = None, currency: str = "USD",
    limit: int = 200, page: int = 1, sortOrder: str = "desc",
) -> Response:
    """Billing line items (one per kind of token a call used), newest first by default.
    ``Accept: text/csv`` returns the same rows as CSV, streamed, with a header line."""
    positive_int(limit, "limit", 1, 500)
    positive_int(page, "page", 1, 10_000_000)
    if sortOrder not in ("asc", "desc"):
        raise bad("sortOrder", "expected asc or desc")
    code = _check_currency(currency)
    window = time_range(startDate, endDate, names=("startDate", "endDate"))
    if code == "USD":
        items, total = await billing.page(store_of(request), billing.Page(principal.org_id, window, page, limit, sortOrder))  # type: ignore[arg-type]
    else:
        items, total = [], 0
    if "text/csv" in request.headers.get("accept", ""):
        return Stream(_csv(items), media_type="text/csv; charset=utf-8",
                      headers={"content-disposition": 'attachment; filename="billing-usage.csv"'})
    return MoneyResponse({
        "data": items,
        "currency": code,
        "pagination": {**pagination(page, limit, total), "sortOrder": sortOrder},
    })


async def _csv(items: list[dict[str, Any]]) -> AsyncIterator[bytes]:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(billing.CSV_COLUMNS)
    for n, item in enumerate(items, 1):
        writer.writerow(billing.csv_row(item))
        if n % 100 == 0:
            yield buf.getvalue().encode()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue().encode()


@get("/api/v1/billing/usage-analytics")
async def billing_usage_analytics(
    request: Request, principal: Principal, startDate: _Date = None, endDate: _Date = None, currency: str = "USD",
) -> dict[str, Any]:
    """The same window aggregated by date, by model and by API key."""
    code = _check_currency(currency)
    window = time_range(startDate, endDate, names=("startDate", "endDate"))
    result = await billing.analytics(store_of(request), principal.org_id, window)
    if code != "USD":
        result = {**result, "currency": code, "totalCostUsd": 0, "byDate": [], "byModel": [], "byApiKey": []}
    return result


HANDLERS = [billing_usage, billing_usage_analytics]
