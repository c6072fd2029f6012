"""The paginated billing export and its analytics, over usage recorded across several days."""

from __future__ import annotations

import csv
import io
from datetime import datetime, time, timedelta, timezone
from decimal import Decimal

import httpx
import pytest

from tests.e2e.conftest import Org

CALLS = 260  # 3 line items each (uncached input, cached input, output): 780 items over 3 days
TODAY = datetime.now(timezone.utc).date()
DAYS = [TODAY - timedelta(days=d) for d in (3, 2, 1)]


def stamp(i: int) -> datetime:
    return datetime.combine(DAYS[i % 3], time(1 + i % 20, i % 60, i % 60), tzinfo=timezone.utc) + timedelta(milliseconds=i)


@pytest.fixture(scope="module")
def billed(stack) -> tuple[Org, list[datetime]]:  # noqa: ANN001 - the session stack
    from tests.e2e.conftest import OPERATOR_KEY

    body = stack.query(OPERATOR_KEY, "POST", "/api/orgs", json={"name": "billing"}).json()
    org = Org(stack, body["org_id"], body["admin_key"])
    stamps = [stamp(i) for i in range(CALLS)]
    with httpx.Client(timeout=30) as client:
        for i, at in enumerate(stamps):
            r = client.post(f"{stack.gateway_url}/v1/usage/record", headers={"authorization": f"Bearer {org.admin_key}"},
                            json={"accountId": f"acct-{i % 7}", "transactionId": f"bill-{i}", "modelId": "gpt-4o",
                                  "inputTokens": 100 + i, "cachedTokens": 20, "outputTokens": 10, "timestamp": at.isoformat()})
            assert r.status_code == 200, r.text
    org.wait_for_requests(CALLS, start=DAYS[0].isoformat(), end=DAYS[-1].isoformat())
    return org, sorted(stamps)


def usage(org: Org, **params) -> httpx.Response:
    base = {"startDate": DAYS[0].isoformat(), "endDate": DAYS[-1].isoformat()}
    return org.stack.query(org.admin_key, "GET", "/api/v1/billing/usage", params={**base, **params})


def test_pages_cover_every_item_once_in_order(billed) -> None:  # noqa: ANN001
    org, stamps = billed
    seen: list[tuple[str, str]] = []
    times: list[str] = []
    for page in range(1, 9):
        body = usage(org, limit=100, page=page, sortOrder="asc").json()
        assert body["pagination"]["totalCount"] == 3 * CALLS and body["pagination"]["totalPages"] == 8
        seen += [(e["inferenceDetails"]["requestId"], e["sku"]) for e in body["data"]]
        times += [e["timestamp"] for e in body["data"]]
    assert len(seen) == len(set(seen)) == 3 * CALLS
    assert times == sorted(times) and times[0].startswith(stamps[0].strftime("%Y-%m-%dT%H:%M:%S"))
    last = usage(org, limit=100, page=8, sortOrder="asc").json()
    assert len(last["data"]) == 80 and last["pagination"]["hasMore"] is False
    assert usage(org, limit=100, page=9).json()["data"] == []


def test_limit_500_newest_first_and_the_items_of_a_call(billed) -> None:  # noqa: ANN001
    org, stamps = billed
    first = usage(org, limit=500).json()
    assert len(first["data"]) == 500 and first["pagination"]["hasMore"] is True
    second = usage(org, limit=500, page=2).json()
    assert len(second["data"]) == 3 * CALLS - 500
    newest = first["data"][:3]
    assert [e["sku"] for e in newest] == ["openai/gpt-4o/input", "openai/gpt-4o/cached_input", "openai/gpt-4o/output"]
    i = max(range(CALLS), key=stamp)  # the newest call
    assert [e["amount"] for e in newest] == [100 + i - 20, 20, 10]
    assert newest[0]["pricePerUnitUsd"] == 0.0000025 and newest[1]["pricePerUnitUsd"] == 0.00000125
    assert newest[0]["costUsd"] == pytest.approx(float((100 + i - 20) * Decimal("0.0000025")))
    assert newest[0]["inferenceDetails"]["promptTokens"] == 100 + i and newest[0]["inferenceDetails"]["completionTokens"] == 10
    assert newest[0]["timestamp"].startswith(stamps[-1].strftime("%Y-%m-%dT%H:%M:%S"))


def test_csv_is_the_same_page(billed) -> None:  # noqa: ANN001
    org, _ = billed
    page = usage(org, limit=50, page=3).json()["data"]
    r = org.stack.query(
        org.admin_key, "GET", "/api/v1/billing/usage", headers={"accept": "text/csv"},
        params={"startDate": DAYS[0].isoformat(), "endDate": DAYS[-1].isoformat(), "limit": 50, "page": 3})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 50
    assert [(x["requestId"], x["sku"], int(x["amount"])) for x in rows] == [
        (e["inferenceDetails"]["requestId"], e["sku"], e["amount"]) for e in page]
    assert Decimal(rows[0]["costUsd"]) == Decimal(str(page[0]["costUsd"]))


def test_a_window_cut_by_timestamps_counts_only_its_items(billed) -> None:  # noqa: ANN001
    org, stamps = billed
    cut_from, cut_to = stamps[40], stamps[100]
    body = org.stack.query(org.admin_key, "GET", "/api/v1/billing/usage", params={
        "startDate": cut_from.isoformat().replace("+00:00", "Z"), "endDate": cut_to.isoformat().replace("+00:00", "Z"),
        "limit": 500}).json()
    inside = [s for s in stamps if cut_from <= s < cut_to]
    assert body["pagination"]["totalCount"] == 3 * len(inside) == len(body["data"])


def test_currencies_and_bad_parameters(billed) -> None:  # noqa: ANN001
    org, _ = billed
    eur = usage(org, currency="EUR").json()
    assert eur["data"] == [] and eur["currency"] == "EUR"
    for params, name in [({"currency": "XYZ"}, "currency"), ({"limit": 501}, "limit"), ({"limit": 0}, "limit"),
                         ({"page": 0}, "page"), ({"sortOrder": "up"}, "sortOrder"), ({"startDate": "yesterday"}, "startDate")]:
        r = usage(org, **params)
        assert r.status_code == 400 and name in r.text, (params, r.text)


def test_usage_analytics_by_date_model_and_key(billed) -> None:  # noqa: ANN001
    org, _ = billed
    body = org.get("/api/v1/billing/usage-analytics", startDate=DAYS[0].isoformat(), endDate=DAYS[-1].isoformat())
    assert [d["date"] for d in body["byDate"]] == [d.isoformat() for d in DAYS]
    assert sum(d["requests"] for d in body["byDate"]) == CALLS
    assert [m["model"] for m in body["byModel"]] == ["gpt-4o"]
    assert len(body["byApiKey"]) == 1 and body["byApiKey"][0]["requests"] == CALLS
    expected = sum(((100 + i - 20) * Decimal("2.50") + 20 * Decimal("1.25") + 10 * Decimal(10)) / 1_000_000 for i in range(CALLS))
    assert body["totalCostUsd"] == expected
