"""Customer, feature, key, tag and daily analytics, and the filtered export, end to end."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal

import httpx
import pytest

from tests.e2e.conftest import OPERATOR_KEY, Org

M = Decimal(1_000_000)
GPT = (1_000 * Decimal("2.50") + 100 * Decimal(10)) / M  # one gpt-4o call below
CLAUDE = (1_000 * Decimal(3) + 100 * Decimal(15)) / M  # one claude-sonnet-4-5 call below


def send(org: Org, key: str, customer: str | None, feature: str | None, anthropic: bool = False) -> None:
    headers = {"authorization": f"Bearer {key}", "x-provider-key": "sk",
               "x-fake-usage": json.dumps({"input_tokens": 1_000, "output_tokens": 100} if anthropic else
                                          {"prompt_tokens": 1_000, "completion_tokens": 100})}
    if customer:
        headers["x-customer-id"] = customer
    if feature:
        headers["x-feature"] = feature
    route, body = (("anthropic/messages", {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]})
                   if anthropic else ("openai/chat/completions", {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}))
    r = httpx.post(f"{org.stack.gateway_url}/api/proxy/v1/{route}", json=body, headers=headers, timeout=30)
    assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def data(stack) -> dict:  # noqa: ANN001
    body = stack.query(OPERATOR_KEY, "POST", "/api/orgs", json={"name": "analytics"}).json()
    org = Org(stack, body["org_id"], body["admin_key"])
    team = org.post("/api/teams", {"name": "growth"})
    member = org.new_key(team["id"])
    for _ in range(3):
        send(org, org.admin_key, "cust-A", "chat")
    send(org, member["key"], "cust-A", "search", anthropic=True)
    send(org, member["key"], "cust-B", "chat")
    send(org, org.admin_key, None, None)
    org.wait_for_requests(6)
    return {"org": org, "team": team, "member": member}


def test_customers_sorted_and_paginated(data: dict) -> None:
    org = data["org"]
    by_cost = org.get("/api/customers")
    assert [(c["customer_id"], c["calls"]) for c in by_cost["customers"]] == [("cust-A", 4), ("cust-B", 1)]
    assert by_cost["customers"][0]["total_cost"] == 3 * GPT + CLAUDE and by_cost["pagination"]["totalCount"] == 2
    assert [c["customer_id"] for c in org.get("/api/customers", sort="name", order="desc")["customers"]] == ["cust-B", "cust-A"]
    assert [c["customer_id"] for c in org.get("/api/customers", sort="calls", order="asc")["customers"]] == ["cust-B", "cust-A"]
    second = org.get("/api/customers", limit=1, page=2)
    assert [c["customer_id"] for c in second["customers"]] == ["cust-B"] and second["pagination"]["hasMore"] is False
    assert org.get("/api/customers", limit=1, page=3)["customers"] == []
    r = org.stack.query(org.admin_key, "GET", "/api/customers", params={"sort": "height"})
    assert r.status_code == 400 and "sort" in r.text


def test_customer_detail(data: dict) -> None:
    org = data["org"]
    detail = org.get("/api/customers/cust-A", limit=3, page=2)
    assert detail["total_cost"] == 3 * GPT + CLAUDE and detail["calls"] == 4
    assert [(m["model"], m["calls"]) for m in detail["top_models"]] == [("gpt-4o-2024-08-06", 3), ("claude-sonnet-4-5", 1)]
    assert len(detail["daily"]) == 1 and detail["daily"][0]["calls"] == 4
    calls = detail["calls_page"]
    assert calls["pagination"]["totalCount"] == 4 and len(calls["data"]) == 1
    assert all(c["customer_id"] == "cust-A" for c in calls["data"])
    assert org.get("/api/customers/nobody")["calls"] == 0


def test_features_and_the_cross_table(data: dict) -> None:
    org = data["org"]
    features = {f["feature"]: f for f in org.get("/api/features")["features"]}
    assert set(features) == {"chat", "search"}
    assert features["chat"]["calls"] == 4 and features["chat"]["total_cost"] == 4 * GPT
    assert features["chat"]["avg_cost_per_call"] == GPT and len(features["chat"]["daily"]) == 1
    assert features["search"]["total_cost"] == CLAUDE
    cross = {(r["customer_id"], r["feature"]): r["calls"] for r in org.get("/api/features/by-customer")["rows"]}
    assert cross == {("cust-A", "chat"): 3, ("cust-A", "search"): 1, ("cust-B", "chat"): 1}


def test_spend_by_key_tag_and_day(data: dict) -> None:
    org = data["org"]
    keys = {k["key_id"]: k for k in org.get("/api/aggregations/by-key")["keys"]}
    member = keys[data["member"]["id"]]
    assert member["calls"] == 2 and member["total_cost"] == GPT + CLAUDE and member["team_name"] == "growth"
    assert member["masked_key"] == data["member"]["masked_key"] and member["key_name"] == "test"
    tags = {t["tag"]: t["calls"] for t in org.get("/api/aggregations/by-tag")["tags"]}
    assert tags == {"chat": 4, "search": 1}
    days = org.get("/api/aggregations/daily")["days"]
    assert len(days) == 1 and days[0]["total_cost"] == 5 * GPT + CLAUDE and days[0]["calls"] == 6


def test_export_as_csv_and_json_with_filters(data: dict) -> None:
    org = data["org"]
    r = org.stack.query(org.admin_key, "GET", "/api/export", params={"customer": "cust-A"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 4 and {x["customer_id"] for x in rows} == {"cust-A"}
    assert sum(Decimal(x["spend"]) for x in rows) == 3 * GPT + CLAUDE
    r = org.stack.query(org.admin_key, "GET", "/api/export", params={"format": "json", "team": data["team"]["id"]})
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert len(lines) == 2 and {x["team_name"] for x in lines} == {"growth"}
    r = org.stack.query(org.admin_key, "GET", "/api/export", params={"format": "json", "model": "gpt-4o", "feature": "chat"})
    assert len(r.text.splitlines()) == 4
    r = org.stack.query(org.admin_key, "GET", "/api/export", params={"format": "xml"})
    assert r.status_code == 400 and "format" in r.text
